"""Defects of the live run page found by an outside review, in Chromium."""

from __future__ import annotations

from collections.abc import Callable

from tests.web.browser import DashboardServer, Page, expect


def test_a_foreach_steps_items_replace_its_pending_panel_as_they_stream_in(
    dashboard: DashboardServer, page_for: Callable[..., Page]
) -> None:
    page = page_for("acme", "operator")
    run_id = dashboard.start_run("fanout", {"topics": ["a", "b"]})
    dashboard.wait_event(run_id, "approval_requested")
    page.goto(f"/runs/{run_id}")
    panels = page.locator('#run-steps > .step[data-step="each"]')
    expect(panels).to_have_count(1)  # the step, not reached yet
    expect(page.locator("#step-each")).to_have_attribute("data-state", "pending")

    dashboard.call(
        lambda services: services.engine.decide(
            run_id, "go", approve=True, comment=None, by="test", tenant="acme"
        )
    )
    expect(page.locator("#run-status")).to_have_text("succeeded", timeout=30_000)
    expect(panels).to_have_count(2)
    expect(page.locator("#step-each")).to_have_count(0)
    expect(page.locator("#step-each_x5b_0_x5d_")).to_have_attribute("data-state", "succeeded")
    expect(page.locator("#step-each_x5b_1_x5d_")).to_have_attribute("data-state", "succeeded")
