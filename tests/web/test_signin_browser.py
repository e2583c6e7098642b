"""Signing in and out of the dashboard in Chromium: keys of each role, a wrong key, the
one-time link of `agentmill ui`, the session cookie's flags, its expiry, and what a browser
without a session gets (the sign-in page, for every page and asset)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from urllib.parse import quote

import pytest
from playwright.sync_api import Cookie

from tests.web.browser import DashboardServer, Page, Pages, expect

SESSION = "am_session"
NAV = ("/", "/approvals", "/workflows", "/costs", "/system")


def cookie(page: Page, name: str = SESSION) -> Cookie | None:
    found = [c for c in page.context.cookies() if c.get("name") == name]
    return found[0] if found else None


def put_back(page: Page, kept: Cookie, *, expires: float = -1) -> None:
    """The cookie set again in the browser, as a client that keeps cookies would send it."""
    page.context.add_cookies([{
        "name": kept.get("name", ""), "value": kept.get("value", ""),
        "domain": kept.get("domain", ""), "path": "/",
        "expires": expires, "httpOnly": True, "sameSite": "Strict",
    }])  # fmt: skip


def key_id(secret: str) -> str:
    """The id part of `amk_<id>_<secret>`."""
    return secret.split("_")[1]


@pytest.mark.parametrize("role", ["viewer", "operator", "admin"])
def test_a_key_of_each_role_signs_in_through_the_form(
    dashboard: DashboardServer, pages: Pages, role: str
) -> None:
    page = pages.new()
    page.goto("/")
    expect(page).to_have_url(f"{dashboard.url}/login")
    page.locator("form#login input[name=key]").fill(dashboard.keys[("globex", role)])
    page.locator("form#login button[type=submit]").click()

    expect(page).to_have_url(f"{dashboard.url}/")
    expect(page.locator("header")).to_contain_text("globex")
    expect(page.locator("header")).to_contain_text(role)
    nav = page.locator("header nav a")
    expect(nav).to_have_count(len(NAV))
    assert [nav.nth(i).get_attribute("href") for i in range(len(NAV))] == list(NAV)
    expect(page.locator("form#signout")).to_be_visible()
    csrf = page.locator("meta[name=csrf-token]").get_attribute("content")
    assert csrf
    assert page.locator("form#signout input[name=csrf_token]").input_value() == csrf


def test_a_wrong_key_shows_why_and_opens_no_session(
    dashboard: DashboardServer, pages: Pages
) -> None:
    page = pages.new()
    page.goto("/login")
    page.locator("form#login input[name=key]").fill("amk_000000000000_not-a-key")
    with page.expect_navigation() as navigation:
        page.locator("form#login button[type=submit]").click()

    response = navigation.value
    assert response is not None
    assert response.status == 401
    expect(page.locator("[role=alert]")).to_contain_text("not valid")
    expect(page.locator("form#login input[name=key]")).to_be_visible()
    assert cookie(page) is None
    page.goto("/")
    expect(page).to_have_url(f"{dashboard.url}/login")


def test_signing_out_ends_the_session_and_the_back_button_shows_nothing(
    dashboard: DashboardServer, page_for: Callable[..., Page]
) -> None:
    run_id = dashboard.start_run("echo", {"topic": "quarterly numbers"})
    page = page_for("acme", "operator")
    expect(page.locator("main")).to_contain_text(run_id[:12])
    token = cookie(page)
    assert token is not None

    page.locator("form#signout button[type=submit]").click()
    expect(page).to_have_url(f"{dashboard.url}/login")
    assert cookie(page) is None

    page.go_back()
    expect(page).to_have_url(re.compile(r"/login"))
    assert run_id[:12] not in page.content()
    put_back(page, token)
    page.goto("/")
    expect(page).to_have_url(f"{dashboard.url}/login")


def dashboard_get_paths() -> list[str]:
    """Every GET route of the dashboard's pages but sign-in, path parameters filled in, and
    assets other than the sign-in page's stylesheet."""
    from fastapi.routing import APIRoute

    from agentmill.web.app import PAGES, PUBLIC_ASSETS
    from agentmill.web.templating import STATIC_DIR

    paths = [
        re.sub(r"\{[^}]+\}", "x-1", route.path)
        for page in PAGES
        for route in page.router.routes
        if isinstance(route, APIRoute) and "GET" in (route.methods or ()) and route.path != "/login"
    ]
    assets = sorted(p.name for p in STATIC_DIR.iterdir() if p.name not in PUBLIC_ASSETS)
    return paths + [f"/static/{name}" for name in assets]


def test_without_a_session_every_page_and_asset_leads_to_sign_in(
    dashboard: DashboardServer, pages: Pages
) -> None:
    paths = [*dashboard_get_paths(), "/?status=running"]
    assert {"/", "/static/dashboard.js"} <= set(paths)
    page = pages.new()
    for path in paths:
        response = page.goto(path)
        assert response is not None
        query = "" if path == "/" else f"?next={quote(path, safe='')}"
        expect(page).to_have_url(f"{dashboard.url}/login{query}")
        assert response.status == 200, path
        expect(page.locator("form#login")).to_be_visible()
        assert "csrf-token" not in page.content()


def test_signing_in_from_a_redirect_goes_back_to_the_page_asked_for(
    dashboard: DashboardServer, pages: Pages
) -> None:
    page = pages.new()
    page.goto("/?status=running")
    page.locator("form#login input[name=key]").fill(dashboard.keys[("acme", "viewer")])
    page.locator("form#login button[type=submit]").click()
    expect(page).to_have_url(f"{dashboard.url}/?status=running")


def test_a_live_fragment_without_a_session_sends_the_page_to_sign_in(
    dashboard: DashboardServer, page_for: Callable[..., Page]
) -> None:
    page = page_for("acme", "viewer")
    response = page.request.get("/?fragment=rows", headers={"HX-Request": "true"}, max_redirects=0)
    assert response.status == 200
    page.context.clear_cookies()
    response = page.request.get("/?fragment=rows", headers={"HX-Request": "true"}, max_redirects=0)
    assert response.status == 401
    assert response.headers["hx-redirect"].startswith("/login")
    # the rows poll every 2 s: htmx follows HX-Redirect to the sign-in page
    expect(page).to_have_url(re.compile(r"/login"), timeout=15_000)
    expect(page.locator("form#login")).to_be_visible()


def test_the_one_time_link_signs_in_once(dashboard: DashboardServer, pages: Pages) -> None:
    first = pages.new()
    first.goto(f"/login?token={dashboard.ui_token}")
    expect(first).to_have_url(f"{dashboard.url}/")
    expect(first.locator("header")).to_contain_text("admin")
    assert cookie(first) is not None

    again = pages.new()
    response = again.goto(f"/login?token={dashboard.ui_token}")
    assert response is not None
    assert response.status == 401
    expect(again.locator("[role=alert]")).to_contain_text("already used")
    assert cookie(again) is None
    first.reload()
    expect(first).to_have_url(f"{dashboard.url}/")


def test_a_made_up_one_time_token_signs_no_one_in(pages: Pages) -> None:
    page = pages.new()
    response = page.goto("/login?token=made-up")
    assert response is not None
    assert response.status == 401
    assert cookie(page) is None


def test_the_session_cookie_is_httponly_strict_and_expiring(
    dashboard: DashboardServer, page_for: Callable[..., Page]
) -> None:
    before = time.time()
    page = page_for("acme", "operator")
    found = cookie(page)
    assert found is not None
    assert found.get("httpOnly") is True
    assert found.get("sameSite") == "Strict"
    assert found.get("secure") is False  # plain HTTP: a Secure cookie would never be sent back
    assert found.get("path") == "/"
    ttl = dashboard.services.settings.session_ttl
    assert before < found.get("expires", 0.0) <= time.time() + ttl + 1
    assert SESSION not in str(page.evaluate("() => document.cookie"))


@pytest.mark.parametrize("dashboard_scheme", ["https"])
def test_over_https_the_session_cookie_is_secure(
    dashboard: DashboardServer, page_for: Callable[..., Page]
) -> None:
    assert dashboard.url.startswith("https://")
    page = page_for("acme", "viewer")
    found = cookie(page)
    assert found is not None
    assert found.get("secure") is True
    assert found.get("httpOnly") is True
    assert found.get("sameSite") == "Strict"


TTL = 5.0


@pytest.mark.parametrize("dashboard_settings_update", [{"session_ttl": TTL}])
def test_an_expired_session_leads_to_sign_in_even_with_its_cookie(
    dashboard: DashboardServer, page_for: Callable[..., Page]
) -> None:
    page = page_for("acme", "operator")
    found = cookie(page)
    assert found is not None
    assert found.get("expires", 0.0) <= time.time() + TTL + 0.5
    expect(page.locator("form#signout")).to_be_visible()
    page.goto("about:blank")  # no live part polling in the meantime

    time.sleep(
        max(0.0, found.get("expires", 0.0) + 0.5 - time.time())
    )  # the session expired before
    put_back(page, found, expires=time.time() + 3600)
    page.goto("/")
    expect(page).to_have_url(f"{dashboard.url}/login")
    expect(page.locator("form#login")).to_be_visible()


def test_revoking_the_key_ends_its_sessions(
    dashboard: DashboardServer, page_for: Callable[..., Page]
) -> None:
    page = page_for("acme", "operator")
    other = page_for("acme", "viewer")
    dashboard.call(
        lambda services: services.keys.revoke(key_id(dashboard.keys[("acme", "operator")]))
    )

    page.reload()
    expect(page).to_have_url(f"{dashboard.url}/login")
    other.reload()
    expect(other).to_have_url(f"{dashboard.url}/")


def test_after_a_live_fragment_lost_its_session_signing_in_returns_to_the_page(
    dashboard: DashboardServer, page_for: Callable[..., Page]
) -> None:
    page = page_for("acme", "viewer")
    page.goto("/?status=succeeded")
    page.context.clear_cookies()
    expect(page).to_have_url(re.compile(r"/login"), timeout=15_000)
    page.locator("form#login input[name=key]").fill(dashboard.keys[("acme", "viewer")])
    page.locator("form#login button[type=submit]").click()
    expect(page).to_have_url(f"{dashboard.url}/?status=succeeded")
    expect(page.locator("form#signout")).to_be_visible()
