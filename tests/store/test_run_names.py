"""Workflow and status of many runs in one query, for one tenant only."""

from __future__ import annotations

import sqlalchemy as sa

from agentmill.store import RunStatus, Store
from agentmill.store.run_names import RunName, run_names
from agentmill.store.tables import runs
from tests.store.seed import run_row


async def test_names_of_the_tenants_runs_and_none_of_others(store: Store) -> None:
    rows = [
        run_row("a1", created_at=1.0, workflow="review", status="running"),
        run_row("a2", created_at=2.0, workflow="deploy", status="interrupted"),
        run_row("g1", created_at=3.0, tenant="globex", workflow="secret"),
    ]
    rows += [run_row(f"b{n}", created_at=10.0 + n) for n in range(1200)]  # several batches
    async with store.engine.begin() as conn:
        await conn.execute(sa.insert(runs), rows)
    wanted = ["a1", "a2", "g1", "missing", *(f"b{n}" for n in range(1200))]

    found = await run_names(store.engine, wanted, tenant="acme")

    assert found["a1"] == RunName(workflow="review", status=RunStatus.RUNNING)
    assert found["a2"] == RunName(workflow="deploy", status=RunStatus.INTERRUPTED)
    assert "g1" not in found
    assert "missing" not in found
    assert len(found) == 2 + 1200
    assert await run_names(store.engine, [], tenant="acme") == {}
