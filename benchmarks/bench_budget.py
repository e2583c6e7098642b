"""Budget overhead per call: reserve the worst case, call, settle (SQLite and PostgreSQL).

Each row times the same model call (a fake model answering at once) without budgets and
through the budget policy with one level (the run) and with three (run, tenant day,
tenant month), sequentially, one call key per call as in a `foreach`. The floor is one
bare database round trip (`SELECT 1`) on the same engine. Target: under 2 ms per call.
Run: python -m benchmarks.bench_budget
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable

import sqlalchemy as sa

from agentmill.agents.base import Agent, StepRequest
from agentmill.agents.llm import LLMAgent
from agentmill.engine.plan import build_plan
from agentmill.policy.budget import budgeted
from agentmill.policy.chain import RunScope
from agentmill.settings import Settings
from agentmill.spec.loader import load_project_text
from agentmill.store import Store
from benchmarks._common import fake_model, postgres_settings, row, sqlite_settings

CALLS = 300
WARMUP = 30


class _NoContext:
    async def emit_text(self, text: str) -> None:
        return None


def _plan_text(tenant_budgets: bool) -> str:
    tenants = "budgets: {tenants: {acme: {day: {usd: 1000}, month: {usd: 10000}}}}\n"
    return (
        "version: 1\n"
        f"{tenants if tenant_budgets else ''}"
        "agents: {a: {model: openai:gpt-4o, instructions: be brief, max_tokens: 200}}\n"
        "workflows: {w: {budget: {usd: 1000}, steps: [{id: s, agent: a, prompt: x}]}}\n"
    )


def _agent(store: Store, run_id: str, *, levels: int) -> Agent:
    llm = LLMAgent(
        model=fake_model(0.0), label="openai:gpt-4o", instructions="be brief", max_tokens=200
    )
    if levels == 0:
        return llm
    plan = build_plan(load_project_text(_plan_text(levels > 1), "bench.yaml").spec, "w")
    scope = RunScope(run_id=run_id, tenant="acme", workflow="w")
    return budgeted(llm, llm=llm, plan=plan, scope=scope, agent_name="a", store=store)


async def _times(call: Callable[[int], Awaitable[object]]) -> list[float]:
    for i in range(WARMUP):
        await call(-1 - i)
    found: list[float] = []
    for i in range(CALLS):
        start = time.perf_counter()
        await call(i)
        found.append((time.perf_counter() - start) * 1000)
    return found


def _p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1]


def _cell(values: list[float]) -> str:
    return f"p50 {statistics.median(values):.3f} / p99 {_p(values, 99):.3f} ms"


async def bench(settings: Settings, backend: str) -> list[str]:
    store = await Store.open(settings.resolved_database_url)
    try:

        async def round_trip(_: int) -> None:
            async with store.engine.connect() as conn:
                await conn.execute(sa.text("SELECT 1"))

        floor = await _times(round_trip)
        timings: dict[int, list[float]] = {}
        for levels in (0, 1, 3):
            run_id = f"bench-{uuid.uuid4().hex[:8]}"  # a run of its own: no hold ids shared
            agent = _agent(store, run_id, levels=levels)

            async def call(i: int, agent: Agent = agent, run_id: str = run_id) -> None:
                request = StepRequest(run_id=run_id, step_id="s", prompt="x", index=i)
                await agent.run(request, _NoContext())

            timings[levels] = await _times(call)
    finally:
        await store.close()
    base = statistics.median(timings[0])
    rows = [row(f"DB round trip ({backend})", "SELECT 1", _cell(floor), "floor", "")]
    rows.append(row(f"call without budget ({backend})", "fake model", _cell(timings[0]), "", ""))
    for levels in (1, 3):
        overhead = statistics.median(timings[levels]) - base
        verdict = "ok" if overhead < 2.0 else "over target"
        rows.append(
            row(
                f"call with budget, {levels} level(s) ({backend})",
                "reserve + call + settle",
                _cell(timings[levels]),
                f"overhead p50 **{overhead:.3f} ms**",
                f"{verdict} (target < 2 ms)",
            )
        )
    return rows


async def main() -> None:
    print(row("benchmark", "workload", "latency per call", "vs floor", "result"))
    print(row("---", "---", "---", "---", "---"))
    with sqlite_settings() as settings:
        for line in await bench(settings, "SQLite"):
            print(line, flush=True)
    with postgres_settings() as pg:
        if pg is None:
            print(row("budget overhead (PostgreSQL)", "skipped: not reachable", "", "", ""))
            return
        for line in await bench(pg, "PostgreSQL"):
            print(line, flush=True)


if __name__ == "__main__":
    asyncio.run(main())
