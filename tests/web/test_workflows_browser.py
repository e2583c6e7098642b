"""Starting a run from a workflow's form in Chromium: typed inputs, then the run's page."""

from __future__ import annotations

import re

from agentmill.server.services import Services
from agentmill.store import RunRecord
from tests.web.browser import DashboardServer, Pages, expect


def test_a_run_started_from_the_form_lands_on_its_page(
    dashboard: DashboardServer, pages: Pages
) -> None:
    page = pages.signed_in("acme", "operator")
    page.locator("header nav a", has_text="Workflows").click()
    card = page.locator('article.workflow[data-workflow="echo"]')
    expect(card).to_contain_text("topic")
    card.locator("a.button", has_text="Start a run").click()
    expect(page).to_have_url(f"{dashboard.url}/workflows/echo")
    pages.snapshot(page, "form")
    page.locator('form#start-run [name="input.topic"]').fill("otters")
    page.locator("form#start-run button[type=submit]").click()

    expect(page).to_have_url(re.compile(rf"^{re.escape(dashboard.url)}/runs/[A-Za-z0-9]+$"))
    run_id = page.url.rsplit("/", 1)[1]
    expect(page.locator("main")).to_contain_text(run_id[:12])

    async def finished(services: Services) -> RunRecord:
        return await services.engine.wait(run_id)

    run = dashboard.call(finished)
    assert run.inputs == {"topic": "otters"}
    assert run.trigger is not None
    assert run.trigger["source"] == "dashboard"
    assert str(run.status) == "succeeded"
    page.goto("/workflows")
    expect(card.locator(f'a[href="/runs/{run_id}"]')).to_be_visible()


def test_a_required_input_left_empty_is_asked_for_again(
    dashboard: DashboardServer, pages: Pages
) -> None:
    page = pages.signed_in("acme", "operator")
    page.goto("/workflows/echo")
    field = page.locator('form#start-run [name="input.topic"]')
    expect(field).to_have_attribute("required", "")
    field.evaluate("node => node.removeAttribute('required')")  # as an old browser would
    with page.expect_navigation() as navigation:
        page.locator("form#start-run button[type=submit]").click()
    response = navigation.value
    assert response is not None
    assert response.status == 422
    expect(page.locator("[role=alert]")).to_contain_text("missing required input 'topic'")


def test_a_viewer_sees_the_workflow_but_no_form(dashboard: DashboardServer, pages: Pages) -> None:
    page = pages.signed_in("acme", "viewer")
    page.goto("/workflows/gated")
    expect(page.locator("h1")).to_have_text("gated")
    expect(page.locator("svg.dag")).to_be_visible()
    expect(page.locator("form#start-run")).to_have_count(0)
    expect(page.locator("main")).to_contain_text("operators and admins start runs")
