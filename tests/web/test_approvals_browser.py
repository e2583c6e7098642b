"""Approving a gate from the Approvals page in Chromium: the gate appears live, the
decision continues the run; a viewer sees the gate but no buttons; another tenant sees
nothing."""

from __future__ import annotations

import time

from agentmill.server.services import Services
from agentmill.store import RunRecord, StepStatus
from agentmill.store.approvals import ApprovalStatus
from tests.web.browser import DashboardServer, Pages, expect

NEXT_SWAP = """() => new Promise(done =>
  document.body.addEventListener("htmx:afterSwap", done, {once: true}))"""
"""Resolves once htmx has swapped in a polled fragment."""


def pending_gate(dashboard: DashboardServer, run_id: str, tenant: str = "acme") -> None:
    async def rows(services: Services) -> list[str]:
        found = await services.engine.approvals(tenant=tenant, run_id=run_id)
        return [row.step_id for row in found if row.status is ApprovalStatus.PENDING]

    deadline = time.monotonic() + 30
    while not dashboard.call(rows):
        assert time.monotonic() < deadline, "the run never reached its gate"
        time.sleep(0.05)


def test_a_gate_appears_live_and_is_approved_from_the_page(
    dashboard: DashboardServer, pages: Pages
) -> None:
    page = pages.signed_in("acme", "operator")
    page.locator("header nav a", has_text="Approvals").click()
    expect(page.locator("#approvals-pending")).to_contain_text("No gate is waiting")
    run_id = dashboard.start_run("gated", {"topic": "owls"})
    card = page.locator(f'article.gate[data-run="{run_id}"]')
    expect(card).to_be_visible()  # brought by the page's polling, no reload
    expect(card).to_contain_text("Publish echo: draft owls?")
    expect(card).to_contain_text("counts as rejected")
    other = pages.signed_in("globex", "operator")
    other.goto("/approvals")
    expect(other.locator("#approvals-pending")).to_contain_text("No gate is waiting")
    viewer = pages.signed_in("acme", "viewer")
    viewer.goto("/approvals")
    expect(viewer.locator(f'article.gate[data-run="{run_id}"]')).to_be_visible()
    expect(viewer.locator("button", has_text="Approve")).to_have_count(0)
    pages.snapshot(page, "waiting")

    comment = card.locator('input[name="comment"]')
    comment.fill("looks right")
    # the list is swapped by the next poll; the form being filled in is kept as it is
    page.evaluate(NEXT_SWAP)
    expect(comment).to_have_value("looks right")
    expect(comment).to_be_focused()
    card.locator("button", has_text="Approve").click()
    expect(page.locator("[role=status]")).to_contain_text(f"Approved sign-off of run {run_id}")
    expect(page.locator("#approvals-pending")).to_contain_text("No gate is waiting")
    expect(page.locator("table.approvals-decided")).to_contain_text("looks right")

    async def finished(services: Services) -> tuple[RunRecord, dict[str, StepStatus]]:
        run = await services.engine.wait(run_id)
        steps = {s.key: s.status for s in await services.engine.store.steps(run_id)}
        return run, steps

    run, steps = dashboard.call(finished)
    assert str(run.status) == "succeeded"
    assert steps["publish"] is StepStatus.SUCCEEDED
