"""The costs page in-process: spend per workflow, agent and model after real runs, the
period chosen, one tenant's spend never shown to another, unknown prices as unknown,
budgets and how much of each is used, names escaped, the live fragment."""

from __future__ import annotations

import asyncio
import html
import re
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from agentmill.settings import Settings
from agentmill.store import StepRecord
from agentmill.store.keys import Role
from agentmill.web.charts import format_amount
from tests.store.seed import insert_runs, insert_steps, run_row, step_row
from tests.web.inprocess import WebApp, dashboard_app, text_of

PROJECT = """
version: 1
models:
  house: {provider: openai, base_url: "http://127.0.0.1:9/v1", name: house-model}
agents:
  writer: {model: openai:gpt-4o}
  guesser: {model: house}
budgets:
  tenants:
    acme: {day: {tokens: 1000000}}  # in tokens: calls of unknown price may go on
workflows:
  echo:
    inputs: {topic: {type: string, default: x}}
    budget: {usd: 2}
    steps:
      - {id: draft, agent: writer, prompt: "draft {{ inputs.topic }}"}
      - {id: polish, agent: writer, needs: [draft], prompt: "polish {{ steps.draft.output }}"}
  mystery:
    steps:
      - {id: guess, agent: guesser, prompt: "guess"}
  gated:
    budget: {usd: 3}
    steps:
      - {id: draft, agent: writer, prompt: "draft"}
      - {id: sign-off, needs: [draft], approval: {prompt: "Go?", timeout: 1h}}
"""

PLAIN = """
version: 1
agents:
  writer: {model: openai:gpt-4o}
workflows:
  echo:
    steps:
      - {id: draft, agent: writer, prompt: "draft"}
"""

DAY = 86400.0


@pytest.fixture
async def site(isolated_settings: Settings) -> AsyncIterator[WebApp]:
    async with dashboard_app(isolated_settings, PROJECT) as opened:
        yield opened


def totals(page: str) -> dict[str, tuple[str, int, int]]:
    """The totals table: group -> (cost, calls, unpriced calls)."""
    rows = re.findall(
        r'<tr class="cost-total[^"]*">\s*<td>(.*?)</td>\s*<td class="cost">(.*?)</td>\s*'
        r'<td class="num">(\d+)</td>\s*<td class="num">(\d+)</td>',
        page,
    )
    return {html.unescape(g): (html.unescape(c), int(n), int(u)) for g, c, n, u in rows}


def bar_titles(page: str) -> list[str]:
    found = re.findall(r'<rect class="chart-bar[^"]*"[^>]*><title>(.*?)</title>', page)
    return [html.unescape(title) for title in found]


def meter_labels(page: str) -> set[str]:
    """What each budget meter says: "name: $x of $y (z%)"."""
    found = re.findall(r'<svg[^>]*class="meter [^"]*"[^>]*aria-label="([^"]*)"', page)
    return {html.unescape(label) for label in found}


async def run_usd(client: httpx.AsyncClient, site: WebApp, run_id: str) -> float:
    """What the run cost, as the API says."""
    key = site.keys[("acme", "viewer")]
    detail = await client.get(f"/v1/runs/{run_id}", headers={"Authorization": f"Bearer {key}"})
    cost: dict[str, float] = detail.json()["cost"]
    return cost["usd"]


async def run_cost(client: httpx.AsyncClient, site: WebApp, run_id: str) -> str:
    return f"${await run_usd(client, site, run_id):.4f}"


async def test_spend_appears_per_workflow_agent_and_model_after_runs(site: WebApp) -> None:
    echo = await site.start("echo")
    await site.start("mystery")
    viewer = await site.signed_in("acme", "viewer")

    page = await viewer.get("/costs", params={"window": "24h", "group": "workflow"})
    assert page.status_code == 200, page.text
    expected = await run_cost(viewer, site, echo)
    assert expected != "$0.0000"
    assert totals(page.text) == {"echo": (expected, 2, 0), "mystery": ("unknown", 1, 1)}
    titles = bar_titles(page.text)
    assert any(t.startswith("workflow echo, ") and t.endswith(expected) for t in titles)
    assert not any("mystery" in t for t in titles)  # no known spend: no bar, not a $0 one

    by_agent = totals((await viewer.get("/costs", params={"group": "agent"})).text)
    assert by_agent == {"writer": (expected, 2, 0), "guesser": ("unknown", 1, 1)}
    by_model = totals((await viewer.get("/costs", params={"group": "model"})).text)
    assert by_model["openai:gpt-4o"] == (expected, 2, 0)
    (unpriced,) = [name for name in by_model if name != "openai:gpt-4o"]
    assert by_model[unpriced] == ("unknown", 1, 1)


async def test_the_period_chosen_counts_only_calls_finished_in_it(site: WebApp) -> None:
    now = time.time()
    engine = site.services.engine.store.engine
    await insert_runs(engine, [
        run_row("r-recent", created_at=now - 3 * DAY - 60, workflow="recent"),
        run_row("r-old", created_at=now - 40 * DAY - 60, workflow="old"),
    ])  # fmt: skip
    await insert_steps(engine, [
        step_row("r-recent", "s", finished_at=now - 3 * DAY, cost_usd=0.5),
        step_row("r-old", "s", finished_at=now - 40 * DAY, cost_usd=0.25),
    ])  # fmt: skip
    viewer = await site.signed_in("acme", "viewer")

    async def groups(window: str) -> set[str]:
        page = await viewer.get("/costs", params={"window": window})
        assert page.status_code == 200
        return set(totals(page.text))

    assert await groups("24h") == set()
    assert await groups("7d") == {"recent"}
    assert await groups("30d") == {"recent"}
    assert await groups("90d") == {"recent", "old"}
    page = await viewer.get("/costs", params={"window": "90d"})
    assert totals(page.text)["old"] == ("$0.2500", 1, 0)
    assert "No model calls in this period" in (await viewer.get("/costs?window=24h")).text
    assert (await viewer.get("/costs", params={"window": "1y"})).status_code == 422


async def test_another_tenants_spend_is_never_shown(site: WebApp) -> None:
    now = time.time()
    engine = site.services.engine.store.engine
    run = run_row("g", created_at=now - 60, tenant="globex", workflow="secret-plan")
    await insert_runs(engine, [run])
    step = step_row("g", "s", finished_at=now - 30, agent="spy", model="x:spy-model", cost_usd=7.0)
    await insert_steps(engine, [step])
    await site.start("echo")

    for role in ("viewer", "admin"):  # an admin of acme, not of the metrics tenant
        acme = await site.signed_in("acme", role)
        for group in ("workflow", "agent", "model"):
            page = await acme.get("/costs", params={"group": group, "window": "24h"})
            assert page.status_code == 200
            assert set(totals(page.text)) & {"secret-plan", "spy", "x:spy-model", "globex"} == set()
            assert "secret-plan" not in page.text
            assert "$7.0000" not in page.text
        refused = await acme.get("/costs", params={"group": "tenant"})
        assert refused.status_code == 403
        assert "globex" not in refused.text
        assert 'group=tenant"' not in (await acme.get("/costs")).text  # not offered

    globex = await site.signed_in("globex", "viewer")
    page = await globex.get("/costs", params={"window": "24h"})
    assert totals(page.text) == {"secret-plan": ("$7.0000", 1, 0)}


async def test_the_metrics_admin_sees_spend_per_tenant(site: WebApp) -> None:
    now = time.time()
    engine = site.services.engine.store.engine
    await insert_runs(engine, [run_row("g", created_at=now - 60, tenant="globex")])
    await insert_steps(engine, [step_row("g", "s", finished_at=now - 30, cost_usd=7.0)])
    echo = await site.start("echo")
    _, secret = await site.services.keys.create(
        tenant=site.services.settings.metrics_tenant, role=Role.ADMIN
    )
    admin = await site.signed_in_with(secret)
    page = await admin.get("/costs", params={"group": "tenant", "window": "24h"})
    assert page.status_code == 200, page.text
    expected = await run_cost(admin, site, echo)
    assert totals(page.text) == {"globex": ("$7.0000", 1, 0), "acme": (expected, 2, 0)}
    assert any(t.startswith("tenant globex, ") for t in bar_titles(page.text))


async def test_names_are_escaped_in_the_table_and_the_chart(site: WebApp) -> None:
    now = time.time()
    engine = site.services.engine.store.engine
    canary = '<script>alert(1)</script><img src=x onerror="alert(2)">'
    await insert_runs(engine, [run_row("m", created_at=now - 60)])
    step = step_row("m", "s", finished_at=now - 30, model=canary, agent=canary)
    await insert_steps(engine, [step])
    viewer = await site.signed_in("acme", "viewer")
    for group in ("model", "agent"):
        page = await viewer.get("/costs", params={"group": group, "window": "24h"})
        assert canary in totals(page.text)
        assert "<script>alert" not in page.text
        assert "<img src=x" not in page.text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
        assert any(canary in title for title in bar_titles(page.text))


async def test_budgets_show_how_much_of_each_is_used(site: WebApp) -> None:
    _, limited = await site.services.keys.create(
        tenant="acme", role=Role.OPERATOR, budget={"day": {"usd": 1.0}}
    )
    echo = await site.start("echo", key=limited)
    viewer = await site.signed_in("acme", "viewer")
    page = (await viewer.get("/costs")).text
    usd = await run_usd(viewer, site, echo)
    steps = await site.services.engine.store.steps(echo)
    tokens = sum(
        (step.usage or {}).get("input_tokens", 0) + (step.usage or {}).get("output_tokens", 0)
        for step in steps
    )
    key_id = limited.split("_")[1]

    meters = meter_labels(page)
    key_meter = f"{format_amount(usd, '$')} of $1.00 ({usd * 100:.0f}%)"
    assert f"API key {key_id} daily budget: {key_meter}" in meters
    (tenant,) = [m for m in meters if m.startswith("tenant 'acme' daily budget: ")]
    pattern = r"tenant 'acme' daily budget: ([\d,]+) tokens of 1,000,000 tokens \(\d+%\)"
    used = re.fullmatch(pattern, tenant)
    assert used is not None, tenant
    assert int(used.group(1).replace(",", "")) == tokens
    assert not any("monthly" in m for m in meters)  # no limit, nothing spent against one
    text = text_of(page)
    assert "workflow echo $2.0000" in text  # the configured per-run limit
    assert "No budgets are configured" not in text

    globex = await site.signed_in("globex", "viewer")
    other = (await globex.get("/costs")).text
    assert "tenant 'acme'" not in other
    assert key_id not in other


async def test_no_budgets_configured_is_said_plainly(isolated_settings: Settings) -> None:
    async with dashboard_app(isolated_settings, PLAIN) as site:
        viewer = await site.signed_in("acme", "viewer")
        page = await viewer.get("/costs")
        assert "No budgets are configured" in text_of(page.text)
        assert 'class="meter' not in page.text


async def test_the_live_fragment_is_the_chart_and_tables_alone(site: WebApp) -> None:
    await site.start("echo")
    viewer = await site.signed_in("acme", "viewer")
    page = await viewer.get("/costs", params={"window": "30d", "group": "agent"})
    assert 'hx-get="/costs?window=30d&amp;group=agent&amp;fragment=live"' in page.text
    assert 'hx-trigger="every 5s"' in page.text
    fragment = await viewer.get("/costs?window=30d&group=agent&fragment=live")
    assert fragment.status_code == 200
    assert fragment.text.lstrip().startswith('<div id="costs-live"')
    assert "<html" not in fragment.text
    assert set(totals(fragment.text)) == {"writer"}
    signed_out = await site.client().get("/costs?fragment=live", headers={"HX-Request": "true"})
    assert signed_out.status_code == 401


async def test_a_running_runs_budget_is_shown_while_it_runs(site: WebApp) -> None:
    secret = site.keys[("acme", "operator")]
    started = await site.client().post(
        "/v1/runs",
        json={"workflow": "gated", "inputs": {}},
        headers={"Authorization": f"Bearer {secret}"},
    )
    run_id = started.json()["id"]
    store = site.services.engine.store
    steps: dict[str, StepRecord] = {}
    for _ in range(400):  # until the draft's cost is settled and the gate waits
        steps = {step.key: step for step in await store.steps(run_id)}
        if "sign-off" in steps and steps["draft"].cost_usd is not None:
            break
        await asyncio.sleep(0.05)
    usd = steps["draft"].cost_usd or 0.0
    assert usd > 0
    viewer = await site.signed_in("acme", "viewer")
    page = (await viewer.get("/costs")).text
    name = f"workflow 'gated' per-run budget (run {run_id})"
    label = f"{name}: {format_amount(usd, '$')} of $3.00 ({usd / 3 * 100:.0f}%)"
    assert label in meter_labels(page)
    await site.services.engine.cancel(run_id, tenant="acme")
    await asyncio.wait_for(site.services.engine.wait(run_id), 30)
    page = (await viewer.get("/costs")).text
    assert not any(label.startswith(name) for label in meter_labels(page))  # while it runs
