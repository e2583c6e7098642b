"""The dashboard's defences as a browser meets them: CSRF tokens on every state-changing
request (forms and fetches, with the session's cookie), the sign-in form's own token, the
Content-Security-Policy on every response and no violation of it on any page."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.web.browser import (
    DashboardServer,
    Page,
    Pages,
    Response,
    csp_problems,
    expect,
)

NAV = ("/", "/approvals", "/workflows", "/costs", "/system")


def csrf_of(page: Page) -> str:
    token = page.locator("meta[name=csrf-token]").get_attribute("content")
    assert token
    return token


def still_signed_in(page: Page, dashboard: DashboardServer) -> None:
    page.goto("/")
    expect(page).to_have_url(f"{dashboard.url}/")
    expect(page.locator("form#signout")).to_be_visible()


def submit_sign_out(page: Page) -> int:
    """Submit the header's sign-out form as it is now; the status of the answer."""
    with page.expect_navigation() as navigation:
        page.locator("form#signout button[type=submit]").click()
    response = navigation.value
    assert response is not None
    return response.status


def test_a_form_whose_csrf_token_was_removed_is_refused(
    dashboard: DashboardServer, page_for: Callable[..., Page]
) -> None:
    page = page_for("acme", "operator")
    page.locator("form#signout input[name=csrf_token]").evaluate("field => field.remove()")

    assert submit_sign_out(page) == 403
    expect(page.locator("main")).to_contain_text("did not come from this dashboard")
    still_signed_in(page, dashboard)


def test_a_form_with_a_wrong_csrf_token_is_refused(
    dashboard: DashboardServer, page_for: Callable[..., Page]
) -> None:
    page = page_for("acme", "operator")
    field = page.locator("form#signout input[name=csrf_token]")
    field.evaluate("(field, value) => { field.value = value }", csrf_of(page)[:-2] + "xx")

    assert submit_sign_out(page) == 403
    still_signed_in(page, dashboard)
    assert submit_sign_out(page) == 200  # the untouched form works: it was the token
    expect(page).to_have_url(f"{dashboard.url}/login")


def test_requests_with_the_cookie_but_no_right_token_are_refused(
    dashboard: DashboardServer, page_for: Callable[..., Page]
) -> None:
    page = page_for("acme", "operator")
    other = page_for("acme", "operator")
    refused = [
        page.request.post("/logout", form={}, max_redirects=0),
        page.request.post("/logout", form={"csrf_token": ""}, max_redirects=0),
        page.request.post("/logout", form={"csrf_token": "wrong"}, max_redirects=0),
        page.request.post("/logout", headers={"X-CSRF-Token": "wrong"}, max_redirects=0),
        page.request.post("/logout", form={"csrf_token": csrf_of(other)}, max_redirects=0),
    ]
    assert [r.status for r in refused] == [403] * len(refused)
    still_signed_in(page, dashboard)

    accepted = page.request.post("/logout", headers={"X-CSRF-Token": csrf_of(page)},
                                 max_redirects=0)  # fmt: skip
    assert accepted.status == 303
    still_signed_in(other, dashboard)


def test_a_fetch_from_the_page_without_the_token_is_refused(
    page_for: Callable[..., Page],
) -> None:
    page = page_for("acme", "operator")
    script = """async (token) => {
        const post = (headers) => fetch("/logout", {method: "POST", headers, redirect: "manual"});
        const without = await post({"Content-Type": "application/x-www-form-urlencoded"});
        const wrong = await post({"X-CSRF-Token": "wrong"});
        return [without.status, wrong.status];
    }"""
    assert page.evaluate(script, csrf_of(page)) == [403, 403]


def test_a_token_request_from_another_origin_is_refused(
    dashboard: DashboardServer, page_for: Callable[..., Page]
) -> None:
    page = page_for("acme", "operator")
    response = page.request.post(
        "/logout",
        headers={"X-CSRF-Token": csrf_of(page), "Origin": "http://attacker.example"},
        max_redirects=0,
    )
    assert response.status == 403
    still_signed_in(page, dashboard)


def test_the_sign_in_form_needs_its_own_token(dashboard: DashboardServer, pages: Pages) -> None:
    """Login CSRF: another site posting its own key would sign the victim in as someone else."""
    page = pages.new()
    key = dashboard.keys[("globex", "admin")]
    response = page.request.post("/login", form={"key": key, "csrf_token": "x"},
                                 max_redirects=0)  # fmt: skip
    assert response.status == 403
    assert not [c for c in page.context.cookies() if c.get("name") == "am_session"]

    page.goto("/login")
    page.locator("form#login input[name=csrf_token]").evaluate("f => { f.value = 'forged' }")
    page.locator("form#login input[name=key]").fill(key)
    with page.expect_navigation() as navigation:
        page.locator("form#login button[type=submit]").click()
    assert navigation.value is not None
    assert navigation.value.status == 403


def visit_every_page(page: Page, pages: Pages, label: str) -> None:
    """Each page of the nav, photographed once loaded."""
    for href in NAV:
        response = page.goto(href)
        assert response is not None
        assert response.status < 500, f"{href}: {response.status}"
        pages.snapshot(page, f"{label}{href.replace('/', '-')}")


@pytest.mark.parametrize("role", ["viewer", "admin"])
def test_every_response_carries_a_strict_content_security_policy(
    dashboard: DashboardServer, pages: Pages, role: str
) -> None:
    page = pages.new()
    seen: list[Response] = []
    page.on("response", lambda r: seen.append(r) if r.url.startswith(dashboard.url) else None)
    page.goto("/login")
    page.goto("/static/app.css")
    page.goto("/no-such-page")
    pages_of = pages.signed_in("acme", role)
    pages_of.on("response", lambda r: seen.append(r) if r.url.startswith(dashboard.url) else None)
    pages_of.goto("/")
    visit_every_page(pages_of, pages, role)
    pages_of.request.post("/logout", form={}, max_redirects=0)

    assert len({r.url for r in seen}) > len(NAV)
    problems = {
        f"{r.request.method} {r.url} ({r.status}): {problem}"
        for r in seen
        for problem in csp_problems(r.headers.get("content-security-policy"))
    }
    assert not problems, "\n".join(sorted(problems))
    assert [r.url for r in seen if r.headers.get("x-content-type-options") != "nosniff"] == []
    html = [r for r in seen if r.headers.get("content-type", "").startswith("text/html")]
    assert len(html) > len(NAV)
    assert [r.url for r in html if "no-store" not in r.headers.get("cache-control", "")] == []


@pytest.mark.parametrize("role", ["viewer", "operator", "admin"])
def test_no_page_violates_the_policy(dashboard: DashboardServer, pages: Pages, role: str) -> None:
    dashboard.start_run("echo", {"topic": "anything"})
    page = pages.signed_in("acme", role)
    visit_every_page(page, pages, role)
    with page.expect_response(lambda r: "fragment=rows" in r.url):  # a live rows' poll
        page.goto("/")

    watched = pages.watch(page)
    assert watched.csp_violations() == []
    assert watched.errors == []


def test_the_browser_enforces_the_policy(pages: Pages) -> None:
    """The policy is not only sent: an inline script injected into a page does not run, and
    the harness sees the violation (what every other page is checked for)."""
    page = pages.signed_in("acme", "viewer")
    ran = page.evaluate("""() => {
        const script = document.createElement("script");
        script.textContent = "window.__injected = true";
        document.head.appendChild(script);
        return window.__injected === true;
    }""")
    assert ran is False
    watched = pages.watch(page)
    expect(page.locator("body")).to_be_visible()
    page.wait_for_function("() => window.__cspViolations.length > 0")
    assert any("script-src" in v for v in watched.csp_violations())
    watched.forget_violations()


CANARY = (
    '<script>window.__xss = 1</script> <img src=x onerror="window.__xss = 2"> '
    '<a href="javascript:window.__xss = 3">click me</a>'
)
"""Model output and tool results are untrusted: this must be shown as text, never run."""


def shows_canary_as_text(page: Page) -> None:
    expect(page.locator("main")).to_contain_text('<img src=x onerror="window.__xss = 2">')
    assert page.evaluate("() => window.__xss") is None
    expect(page.locator("img[src='x']")).to_have_count(0)
    expect(page.locator("a[href^='javascript:' i]")).to_have_count(0)
    scripts = page.locator("script").evaluate_all("all => all.map(s => s.getAttribute('src'))")
    assert all(str(src).startswith("/static/") for src in scripts), scripts
    expect(page.locator("a", has_text="click me")).to_have_count(0)


def test_model_output_and_tool_results_render_as_text(
    dashboard: DashboardServer, page_for: Callable[..., Page]
) -> None:
    dashboard.model.reply = lambda prompt: CANARY
    dashboard.tools.reply = lambda found: f"{CANARY} / {found}"
    researched = dashboard.start_run("research", {"topic": CANARY})
    gated = dashboard.start_run("gated", {"topic": "release"})
    assert dashboard.wait_finished(researched).status == "succeeded"
    page = page_for("acme", "operator")

    for path in (f"/runs/{researched}", "/approvals", f"/runs/{gated}"):
        response = page.goto(path)
        assert response is not None
        assert response.status == 200, path
        shows_canary_as_text(page)


def test_streamed_model_text_arrives_as_text(
    dashboard: DashboardServer, page_for: Callable[..., Page]
) -> None:
    page = page_for("acme", "operator")
    dashboard.model.latency = 1.5
    dashboard.model.reply = lambda prompt: CANARY
    run_id = dashboard.start_run("echo", {"topic": "news"})
    page.goto(f"/runs/{run_id}")
    shows_canary_as_text(page)  # waits for the text: streamed while the page is open
    dashboard.wait_finished(run_id)
    shows_canary_as_text(page)


def test_a_viewer_sees_no_action_and_its_posts_are_refused(
    dashboard: DashboardServer, page_for: Callable[..., Page]
) -> None:
    gated = dashboard.start_run("gated", {"topic": "launch"})
    dashboard.wait_event(gated, "approval_requested")
    viewer = page_for("acme", "viewer")
    for path in (*NAV, "/workflows/echo", f"/runs/{gated}"):
        viewer.goto(path)
        expect(viewer.locator("form#signout")).to_be_visible()
        forms = viewer.locator("form[method=post i]").evaluate_all("all => all.map(f => f.id)")
        assert forms == ["signout"], path

    token = csrf_of(viewer)
    actions: list[tuple[str, dict[str, str | float | bool]]] = [
        ("/workflows/echo/runs", {"csrf_token": token, "input.topic": "sneaky"}),
        (f"/runs/{gated}/cancel", {"csrf_token": token}),
        (f"/runs/{gated}/approvals/sign-off", {"csrf_token": token, "decision": "approve"}),
    ]
    refused = [viewer.request.post(path, form=form, max_redirects=0) for path, form in actions]
    assert [r.status for r in refused] == [403] * len(refused)
    runs = dashboard.call(lambda services: services.engine.store.list_runs(tenant="acme"))
    assert [(r.id, r.status) for r in runs] == [(gated, "running")]

    operator = page_for("acme", "operator")
    started = operator.request.post(
        "/workflows/echo/runs",
        form={"csrf_token": csrf_of(operator), "input.topic": "fine"},
        max_redirects=0,
    )
    assert started.status == 303
    assert started.headers["location"].startswith("/runs/")
