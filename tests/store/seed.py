"""Rows written straight into the tables, for tests of the store's queries at scale."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from agentmill.store import Store, trigger_source_of
from agentmill.store.tables import runs, steps


def run_row(
    run_id: str,
    *,
    created_at: float,
    tenant: str = "acme",
    workflow: str = "w",
    status: str = "succeeded",
    trigger: dict[str, Any] | None = None,
    **values: Any,
) -> dict[str, Any]:
    """An `am_runs` row with every column set (a bulk insert needs the same keys)."""
    row: dict[str, Any] = {
        "id": run_id,
        "tenant": tenant,
        "workflow": workflow,
        "status": status,
        "inputs": {},
        "outputs": None,
        "error": None,
        "snapshot": {"workflow": {"steps": []}},
        "config_path": None,
        "usage": None,
        "created_at": created_at,
        "started_at": None,
        "finished_at": None,
        "owner": None,
        "owner_pid": None,
        "owner_host": None,
        "heartbeat_at": None,
        "cancel_requested": False,
        "trigger": trigger,
        "trigger_source": trigger_source_of(trigger),
        "budget": None,
    }
    row.update(values)
    return row


def step_row(
    run_id: str,
    key: str,
    *,
    finished_at: float | None,
    model: str | None = "openai:gpt-4o",
    cost_usd: float | None = 0.01,
    status: str = "succeeded",
    agent: str | None = "writer",
    estimated: bool = False,
) -> dict[str, Any]:
    usage: dict[str, Any] = {"input_tokens": 10, "output_tokens": 5}
    if estimated:
        usage["estimated"] = True
    return {
        "run_id": run_id,
        "key": key,
        "step_id": key.split("[", 1)[0],
        "item_index": None,
        "status": status,
        "attempt": 1,
        "output": None,
        "error": None,
        # As the journal writes it (json.dumps): the estimated flag is matched in its text.
        "usage": usage,
        "model": model,
        "started_at": None if finished_at is None else finished_at - 1,
        "finished_at": finished_at,
        "cost_usd": cost_usd,
        "details": None,
        "agent": agent,
    }


async def insert(engine: AsyncEngine, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    async with engine.begin() as conn:
        for start in range(0, len(rows), 2000):
            await conn.execute(table.insert(), rows[start : start + 2000])


async def insert_runs(engine: AsyncEngine, rows: list[dict[str, Any]]) -> None:
    await insert(engine, runs, rows)


async def insert_steps(engine: AsyncEngine, rows: list[dict[str, Any]]) -> None:
    await insert(engine, steps, rows)


async def query_plan(store: Store, query: Callable[[], Awaitable[object]]) -> str:
    """SQLite's plan of the last statement `query` sends, with its parameters."""
    sent: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        sent.append((statement, parameters))

    sync_engine = store.engine.sync_engine
    event.listen(sync_engine, "before_cursor_execute", record)
    try:
        await query()
    finally:
        event.remove(sync_engine, "before_cursor_execute", record)
    statement, parameters = sent[-1]
    async with store.engine.connect() as conn:
        rows = await conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)
        return "\n".join(str(row[-1]) for row in rows)
