"""The dashboard as a team uses it, end to end in Chromium: an operator starts a run from
the workflow's form, watches the model's text stream in and the DAG change state, approves
the gate from the Approvals page, and sees the run finish and its cost on the Costs page.
Another tenant sees none of it; a viewer sees the gate but cannot decide it.

With AGENTMILL_DOCS_SCREENSHOTS=1 the pages are also photographed into docs/img (the
pictures of the README and docs/dashboard.md).
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from pydantic_ai.messages import ModelMessage
from pydantic_ai.models.function import AgentInfo

from tests.fakes import ScriptedModel
from tests.web.browser import DashboardServer, Page, Pages, expect

DOCS_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "img"


@dataclass
class Typing(ScriptedModel):
    """Writes its reply a word at a time, as a model streams."""

    pause: float = 0.08

    async def _stream(self, messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
        async for chunk in super()._stream(messages, info):
            await asyncio.sleep(self.pause)
            yield chunk


def reply(prompt: str) -> str:
    if prompt.startswith("draft"):
        return (
            "Owls hunt at night: their soft-edged feathers silence their flight, and their "
            "asymmetric ears locate prey by sound alone, even under snow."
        )
    return f"Published: {prompt[len('publish ') :][:60]}"


def photograph(page: Page, name: str) -> None:
    if os.environ.get("AGENTMILL_DOCS_SCREENSHOTS"):
        DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=DOCS_IMAGES / f"dashboard-{name}.png")


def state(name: str) -> re.Pattern[str]:
    return re.compile(rf"\bstate-{name}\b")


def test_start_watch_approve_and_see_the_cost(dashboard: DashboardServer, pages: Pages) -> None:
    dashboard.model = Typing(reply=reply)
    earlier = [dashboard.start_run("echo", {"topic": topic}) for topic in ("bats", "moths")]
    lead = pages.signed_in("acme", "operator")
    lead.set_viewport_size({"width": 1280, "height": 860})

    lead.locator("header nav a", has_text="Workflows").click()
    lead.locator("a", has_text="gated").first.click()
    lead.locator("#start-run input[type=text]").first.fill("owls")
    lead.locator("#start-run button[type=submit]").click()
    expect(lead).to_have_url(re.compile(r"/runs/[0-9a-f]+$"))
    run_id = lead.url.rsplit("/", 1)[1]

    draft = lead.locator("#step-draft .step-output")
    expect(draft).to_contain_text("soft-edged")  # streamed in, not yet finished
    expect(lead.locator("#dag-draft")).to_have_class(state("running"))
    photograph(lead, "run")
    expect(lead.locator("#dag-sign-off")).to_have_class(state("waiting"), timeout=30_000)
    expect(draft).to_have_text(reply("draft"))

    assert_other_tenant_sees_nothing(pages, run_id)
    assert_a_viewer_cannot_decide(pages, run_id)

    lead.locator("header nav a", has_text="Approvals").click()
    gate = lead.locator(f'article.gate[data-run="{run_id}"]')
    expect(gate).to_contain_text("Publish")
    gate.locator('input[name="comment"]').fill("ship it")
    photograph(lead, "approvals")
    gate.locator("button", has_text="Approve").click()
    expect(lead.locator("[role=status]")).to_contain_text("Approved")

    lead.goto(f"/runs/{run_id}")
    expect(lead.locator("#run-status")).to_have_text("succeeded", timeout=30_000)
    expect(lead.locator("#dag-publish")).to_have_class(state("succeeded"))
    expect(lead.locator("#step-publish .step-output")).to_contain_text("Published:")
    photograph(lead, "run-finished")

    lead.locator("header nav a", has_text="Costs").click()
    expect(lead.locator("table.cost-totals")).to_contain_text("gated")
    expect(lead.locator(".chart-box svg")).to_be_visible()
    photograph(lead, "costs")
    lead.locator("header nav a", has_text="Runs").click()
    row = lead.locator(f'tr[data-run="{run_id}"]')
    expect(row).to_contain_text("succeeded")
    expect(row.locator("td.cost")).to_contain_text("$")
    for other_run in earlier:
        expect(lead.locator(f'tr[data-run="{other_run}"]')).to_contain_text("succeeded")
    photograph(lead, "runs")


def assert_other_tenant_sees_nothing(pages: Pages, run_id: str) -> None:
    other = pages.signed_in("globex", "admin")
    expect(other.locator(f'tr[data-run="{run_id}"]')).to_have_count(0)
    response = other.goto(f"/runs/{run_id}")
    assert response is not None
    assert response.status == 404
    other.goto("/approvals")
    expect(other.locator(f'article.gate[data-run="{run_id}"]')).to_have_count(0)
    other.goto("/costs")
    expect(other.locator("table.cost-totals")).not_to_contain_text("gated")


def assert_a_viewer_cannot_decide(pages: Pages, run_id: str) -> None:
    viewer = pages.signed_in("acme", "viewer")
    viewer.goto("/approvals")
    expect(viewer.locator(f'article.gate[data-run="{run_id}"]')).to_be_visible()
    expect(viewer.locator("button", has_text="Approve")).to_have_count(0)
    csrf = viewer.locator('meta[name="csrf-token"]').get_attribute("content")
    assert csrf
    refused = viewer.request.post(
        "/approvals/decide",
        form={"csrf_token": csrf, "run": run_id, "gate": "sign-off", "decision": "approve"},
        headers={"Origin": pages.base_url},
    )
    assert refused.status == 403
    viewer.goto(f"/runs/{run_id}")
    expect(viewer.locator("#dag-sign-off")).to_have_class(state("waiting"))
