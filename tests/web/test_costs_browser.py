"""The Costs and System pages in Chromium: a run's cost appears on an open Costs page when
the run finishes (its bar in the chart, its row in the totals) without a reload, another
tenant sees none of it, and neither page trips the Content-Security-Policy."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from agentmill.server.services import Services
from agentmill.store.costs import CostSummary, run_costs
from tests.web.browser import DashboardServer, Page, Pages, expect


def cost_of(dashboard: DashboardServer, run_id: str) -> CostSummary:
    async def find(services: Services) -> CostSummary:
        found = await run_costs(services.engine.store.engine, [run_id], tenant="acme")
        return found[run_id]

    return dashboard.call(find)


def test_a_finished_runs_cost_appears_on_the_open_costs_page(
    dashboard: DashboardServer, pages: Pages, page_for: Callable[..., Page]
) -> None:
    page = page_for("acme", "viewer")
    page.goto("/costs?window=24h&group=workflow")
    expect(page.locator("svg.chart-empty")).to_be_visible()
    expect(page.locator("table.cost-totals tr.empty")).to_be_visible()

    run_id = dashboard.start_run("echo", {"topic": "spend"})
    dashboard.wait_finished(run_id)
    cost = cost_of(dashboard, run_id)
    assert cost.calls == 2
    assert cost.usd > 0

    row = page.locator("table.cost-totals tr.cost-total", has_text="echo")
    expect(row).to_be_visible(timeout=20_000)  # the live part polls every 5 s
    expect(row.locator("td.cost")).to_have_text(cost.describe())
    bar = page.locator("svg.chart-bars rect.chart-bar")
    expect(bar).to_have_count(1)
    expect(bar.locator("title")).to_contain_text("workflow echo, ")
    expect(page.locator("svg.chart-bars .chart-legend-text")).to_have_text(["echo"])
    expect(page).to_have_url(f"{dashboard.url}/costs?window=24h&group=workflow")
    pages.snapshot(page, "costs")

    page.locator("nav.choices a", has_text="model").click()
    by_model = page.locator("table.cost-totals tr.cost-total", has_text="openai:gpt-4o")
    expect(by_model).to_be_visible()

    other = page_for("globex", "admin")
    other.goto("/costs?window=24h")
    expect(other.locator("table.cost-totals tr.empty")).to_be_visible()
    expect(other.locator("main")).not_to_contain_text("echo")
    expect(other.locator("nav.choices a", has_text="tenant")).to_have_count(0)


@pytest.mark.parametrize("dashboard_settings_update", [{"metrics_tenant": "acme"}])
def test_the_system_page_shows_the_tenants_part_live_without_csp_violations(
    dashboard: DashboardServer, pages: Pages, page_for: Callable[..., Page]
) -> None:
    """acme runs the platform here (its admins see the workers); globex's admin does not."""
    other_admin = page_for("globex", "admin")
    other_admin.goto("/system")
    expect(other_admin.locator("span.tenant-queued")).to_have_text("0")
    expect(other_admin.locator("table.workers")).to_have_count(0)
    admin = page_for("acme", "admin")
    admin.goto("/system")
    expect(admin.locator("table.workers")).to_be_visible()
    expect(admin.locator(".database")).to_contain_text("sqlite")
    expect(admin.locator(".workers-setting")).to_have_text("up to 4 runs at once")
    pages.snapshot(admin, "system-admin")

    viewer = page_for("acme", "viewer")
    viewer.goto("/system")
    expect(viewer.locator("span.tenant-queued")).to_have_text("0")
    expect(viewer.locator("table.workers")).to_have_count(0)
    expect(viewer.locator("table.deliveries tr.empty")).to_be_visible()
    # the live part is swapped in place by htmx: wait for one refresh
    with viewer.expect_response(lambda r: "/system?fragment=live" in r.url, timeout=15_000):
        pass
    expect(viewer.locator("#system-live")).to_have_count(1)
