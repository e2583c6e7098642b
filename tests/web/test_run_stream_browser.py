"""The run page's stream in Chromium: a background tab gives its stream back and resumes
where it was when shown again; a stream the server refuses is said so on the page."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from agentmill.server.services import Services
from tests.web.browser import DashboardServer, Page, Pages, expect
from tests.web.test_run_page_browser import reply, slow_model

HIDE = """() => {
  Object.defineProperty(document, "hidden", { value: true, configurable: true });
  document.dispatchEvent(new Event("visibilitychange"));
}"""
SHOW = """() => {
  Object.defineProperty(document, "hidden", { value: false, configurable: true });
  document.dispatchEvent(new Event("visibilitychange"));
}"""


def streams_held(dashboard: DashboardServer, tenant: str, role: str) -> int:
    """Open streams of the key of (tenant, role) on the server, once they settle."""
    key_id = dashboard.keys[(tenant, role)].split("_")[1]

    async def count(services: Services) -> int:
        return services.streams.held(key_id)

    return dashboard.call(count)


def eventually(check: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "never happened"
        time.sleep(0.05)


def test_a_hidden_tab_gives_its_stream_back_and_resumes_without_repeats(
    dashboard: DashboardServer, page_for: Callable[..., Page]
) -> None:
    slow_model(dashboard, pause=0.1)
    page = page_for("acme", "viewer")
    page.clock.install()
    run_id = dashboard.start_run("echo", {"topic": "tabs"})
    page.goto(f"/runs/{run_id}")
    root = page.locator("#run-page")
    expect(root).to_have_attribute("data-stream_state", "open")
    expect(page.locator("#step-draft .step-output")).to_contain_text("w2")

    page.evaluate(HIDE)
    page.clock.run_for(31_000)  # the grace a briefly hidden tab keeps its stream
    expect(root).to_have_attribute("data-stream_state", "paused")
    eventually(lambda: streams_held(dashboard, "acme", "viewer") == 0)
    page.evaluate(SHOW)
    expect(root).to_have_attribute("data-stream_state", "open")

    assert dashboard.wait_finished(run_id).status == "succeeded"
    expect(page.locator("#run-status")).to_have_text("succeeded")
    expect(page.locator("#step-draft .step-output")).to_have_text(reply("draft tabs"))
    expect(page.locator("#step-polish .step-output")).to_have_text(
        reply("polish " + reply("draft tabs"))
    )


@pytest.mark.parametrize("dashboard_settings_update", [{"max_streams_per_key": 1}])
def test_a_refused_stream_is_said_on_the_page(
    dashboard: DashboardServer, pages: Pages, page_for: Callable[..., Page]
) -> None:
    slow_model(dashboard, pause=0.3)
    run_id = dashboard.start_run("echo", {"topic": "crowded"})
    first = page_for("acme", "viewer")
    first.goto(f"/runs/{run_id}")
    expect(first.locator("#run-page")).to_have_attribute("data-stream_state", "open")
    second = page_for("acme", "viewer")  # the same key: its one stream slot is taken
    second.goto(f"/runs/{run_id}")
    expect(second.locator("#run-page")).to_have_attribute("data-stream_state", "closed")
    notice = second.locator("#stream-notice")
    expect(notice).to_be_visible()
    expect(notice).to_contain_text("reload the page")
    expect(first.locator("#stream-notice")).to_be_hidden()
    pages.watch(second).console.clear()  # the refused request is logged by the browser
