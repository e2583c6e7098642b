"""Signing in and out of the dashboard, sessions, CSRF, and what needs a session."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from agentmill.store.tables import sessions
from agentmill.web.auth import safe_next
from tests.web.web_client import Web, csrf_of


async def test_pages_and_assets_need_a_session_but_the_sign_in_page(web: Web) -> None:
    client = web.client()
    for path in ("/", "/runs", "/static/dashboard.js", "/static/htmx-2.0.11.min.js"):
        response = await client.get(path)
        assert response.status_code == 303, path
        assert response.headers["location"].startswith("/login")
    assert (await client.get("/login")).status_code == 200
    assert (await client.get("/static/app.css")).status_code == 200
    htmx = await client.get("/?fragment=rows", headers={"HX-Request": "true"})
    assert htmx.status_code == 401
    assert htmx.headers["HX-Redirect"] == "/login"


async def test_signing_in_sets_a_strict_http_only_cookie_and_keeps_the_target(web: Web) -> None:
    client = web.client()
    redirected = await client.get("/runs?status=failed")
    assert redirected.headers["location"] == "/login?next=%2Fruns%3Fstatus%3Dfailed"
    form = await client.get(redirected.headers["location"])
    response = await client.post(
        "/login",
        data={
            "key": web.keys[("acme", "viewer")],
            "csrf_token": csrf_of(form.text),
            "next": "/runs?status=failed",
        },
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/runs?status=failed"
    cookie = response.headers["set-cookie"]
    assert cookie.startswith("am_session=")
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    assert "Secure" not in cookie  # plain http here; Secure over https
    page = await client.get("/")
    assert page.status_code == 200
    assert "acme" in page.text
    assert "viewer" in page.text


async def test_a_wrong_key_says_so_and_signs_no_one_in(web: Web) -> None:
    client = web.client()
    form = await client.get("/login")
    response = await client.post(
        "/login", data={"key": "amk_nope_nope", "csrf_token": csrf_of(form.text)}
    )
    assert response.status_code == 401
    assert "this API key is not valid" in response.text
    assert "am_session" not in response.headers.get("set-cookie", "")


async def test_the_sign_in_form_refuses_a_post_without_its_own_token(web: Web) -> None:
    client = web.client()
    await client.get("/login")
    response = await client.post(
        "/login", data={"key": web.keys[("acme", "admin")], "csrf_token": "forged"}
    )
    assert response.status_code == 403
    assert "am_session" not in response.headers.get("set-cookie", "")


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example", "/\\evil", "x"])
def test_after_sign_in_only_this_site_is_a_target(target: str) -> None:
    assert safe_next(target) == "/"


async def test_signing_out_ends_the_session_for_good(web: Web) -> None:
    client = await web.signed_in()
    token = client.cookies["am_session"]
    csrf = await web.csrf(client)
    response = await client.post("/logout", data={"csrf_token": csrf})
    assert response.status_code == 303
    assert (await client.get("/")).status_code == 303
    client.cookies.set("am_session", token)  # a copy kept by someone
    assert (await client.get("/")).status_code == 303


async def test_sign_out_needs_the_csrf_token(web: Web) -> None:
    client = await web.signed_in()
    assert (await client.post("/logout", data={})).status_code == 403
    assert (await client.post("/logout", data={"csrf_token": "wrong"})).status_code == 403
    assert (await client.get("/")).status_code == 200


async def test_a_post_from_another_origin_is_refused_even_with_the_token(web: Web) -> None:
    client = await web.signed_in()
    csrf = await web.csrf(client)
    response = await client.post(
        "/logout", data={"csrf_token": csrf}, headers={"Origin": "https://evil.example"}
    )
    assert response.status_code == 403


async def test_an_expired_session_signs_in_again(web: Web) -> None:
    client = await web.signed_in()
    engine = web.services.engine.store.engine
    async with engine.begin() as conn:
        await conn.execute(sessions.update().values(expires_at=time.time() - 1))
    response = await client.get("/")
    assert response.status_code == 303
    assert response.headers["location"] == "/login"


async def test_revoking_the_key_ends_its_sessions(web: Web) -> None:
    client = await web.signed_in("acme", "operator")
    key_id = next(
        key.id for key in await web.services.keys.list(tenant="acme") if str(key.role) == "operator"
    )
    await web.services.keys.revoke(key_id)
    assert (await client.get("/")).status_code == 303


async def test_the_cookie_holds_a_token_the_database_never_stores(web: Web) -> None:
    client = await web.signed_in()
    token = client.cookies["am_session"]
    async with web.services.engine.store.engine.connect() as conn:
        rows = (await conn.execute(sa.select(sessions))).all()
    assert rows
    assert all(token not in str(tuple(row)) for row in rows)


async def test_the_one_time_link_signs_in_once_as_admin_of_the_default_tenant(web: Web) -> None:
    first = web.client()
    response = await first.get(f"/login?token={web.ui_token.value}")
    assert response.status_code == 303
    page = await first.get("/")
    assert page.status_code == 200
    assert "admin" in page.text
    second = web.client()
    again = await second.get(f"/login?token={web.ui_token.value}")
    assert again.status_code == 401
    assert "already used" in again.text
    assert (await second.get("/")).status_code == 303


async def test_dashboard_responses_carry_a_strict_policy(web: Web) -> None:
    client = await web.signed_in()
    for path in ("/login", "/", "/static/dashboard.js", "/no-such-page"):
        headers = (await client.get(path)).headers
        policy = headers["content-security-policy"]
        assert "script-src 'self'" in policy
        assert "unsafe-inline" not in policy
        assert "frame-ancestors 'none'" in policy
        assert headers["x-content-type-options"] == "nosniff"
    assert (await client.get("/")).headers["cache-control"] == "no-store"


async def test_errors_are_pages_on_the_dashboard_and_problems_on_the_api(web: Web) -> None:
    client = await web.signed_in()
    page = await client.get("/no-such-page")
    assert page.status_code == 404
    assert page.headers["content-type"].startswith("text/html")
    assert "Traceback" not in page.text
    api = await client.get("/v1/runs/0123456789abcdef0123")
    assert api.status_code == 401
    assert api.headers["content-type"] == "application/problem+json"


async def test_a_one_time_link_session_is_refused_by_a_server_without_one(web: Web) -> None:
    client = web.client()
    await client.get(f"/login?token={web.ui_token.value}")
    assert (await client.get("/")).status_code == 200
    web.app.state.ui_token = None  # as `agentmill serve` on the same host and database
    response = await client.get("/")
    assert response.status_code == 303
    assert response.headers["location"] == "/login"
