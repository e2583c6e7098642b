"""Budgets held across worker processes sharing one PostgreSQL database."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agentmill.policy.budget import estimate_input_tokens
from agentmill.settings import Settings
from agentmill.store import Store
from agentmill.store.budgets import BudgetStore, HoldStatus

ROOT = Path(__file__).resolve().parents[2]
WORKER = ROOT / "tests" / "fixtures" / "budget_worker.py"

pytestmark = pytest.mark.postgres


def _start_worker(url: str, tenant: str, calls: int, limit: int) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, str(WORKER), url, tenant, str(calls), str(limit)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _ready(worker: subprocess.Popen[str]) -> None:
    assert worker.stdout is not None
    line = worker.stdout.readline()
    if line.strip() != "ready":
        _, stderr = worker.communicate(timeout=30)
        pytest.fail(f"the worker did not start: {line!r}\n{stderr}")


def _result(worker: subprocess.Popen[str]) -> dict[str, Any]:
    stdout, stderr = worker.communicate(timeout=120)
    assert worker.returncode == 0, stderr
    assert "Traceback" not in stderr, stderr
    found: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    return found


async def test_two_worker_processes_admit_no_more_than_the_budget_fits(
    fresh_pg_url: str,
) -> None:
    from tests.fixtures.budget_worker import INSTRUCTIONS, MAX_TOKENS, PROMPT

    worst = estimate_input_tokens(INSTRUCTIONS, PROMPT) + MAX_TOKENS
    limit = 5 * worst + worst // 2
    tenant = "acme"
    workers = [_start_worker(fresh_pg_url, tenant, 50, limit) for _ in range(2)]
    try:
        for worker in workers:
            _ready(worker)
        for worker in workers:  # both start their 50 calls together
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        results = [await asyncio.to_thread(_result, worker) for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()

    admitted = sum(result["admitted"] for result in results)
    assert 1 <= admitted <= 5
    assert sum(result["refused"] for result in results) == 100 - admitted
    for result in results:
        if result["refused"]:
            assert result["levels"] == ["tenant 'acme' daily budget"]

    store = await Store.open(fresh_pg_url)
    try:
        budgets = BudgetStore(store.sync_engine)
        entry = await budgets.entry(f"tenant:{tenant}/day:{datetime.now(UTC):%Y-%m-%d}")
        assert entry is not None
        assert entry.reserved_tokens == 0
        assert entry.spent_tokens > 0
        for result in results:
            holds = await budgets.holds(result["run_id"])
            assert len(holds) == result["admitted"]
            assert {hold.status for hold in holds} <= {HoldStatus.SETTLED}
    finally:
        await store.close()


async def test_concurrent_settlements_over_several_levels_never_deadlock(
    isolated_settings: Settings,
) -> None:
    """Reservations and settlements of holds on the same two levels, many at once: each
    transaction locks the levels in scope order, so none waits on another in a cycle."""
    from agentmill.store.budgets import Hold, Limit

    store = await Store.open(isolated_settings.resolved_database_url)
    budgets = BudgetStore(store.sync_engine)
    limits = [Limit(scope=s, name=s, usd=1e6) for s in ("tenant:t/day:x", "run:r")]

    async def worker(number: int) -> None:
        for i in range(40):
            hold = Hold(
                id=f"r/s[{number}.{i}]#1@m",
                run_id="r",
                call_key=f"s[{number}.{i}]",
                tenant="t",
                scopes=tuple(limit.scope for limit in limits),
                usd=0.01,
                tokens=10,
            )
            assert await budgets.reserve(hold, limits)
            assert await budgets.settle(hold, usd=0.005, tokens=4)

    try:
        await asyncio.gather(*(worker(n) for n in range(4)))
        for limit in limits:
            entry = await budgets.entry(limit.scope)
            assert entry is not None
            assert (entry.spent_tokens, entry.reserved_tokens) == (4 * 40 * 4, 0)
            assert abs(entry.spent_usd - 4 * 40 * 0.005) < 1e-9
            assert abs(entry.reserved_usd) < 1e-9
        assert {hold.status for hold in await budgets.holds("r")} == {HoldStatus.SETTLED}
    finally:
        await store.close()
