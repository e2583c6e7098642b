"""Group commit for the hot path: step checkpoints and events from many tasks at once.

Writers queue rows without waiting; `commit()` waits until everything queued so far is in
the database. One transaction carries every row queued since the last one, so a fan-out of
hundreds of steps costs a handful of commits instead of one per row.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from agentmill.store.records import EventRecord, StepRecord
from agentmill.store.tables import events, steps

__all__ = ["Journal"]

logger = logging.getLogger("agentmill.store")

_STEP_UPDATE_COLUMNS = [c.name for c in steps.columns if c.name not in {"run_id", "key"}]


class Journal:
    """Queues step and event rows and writes them in batched transactions."""

    def __init__(self, engine: AsyncEngine, *, flush_interval: float = 0.05) -> None:
        self._engine = engine
        self._flush_interval = flush_interval
        self._events: list[dict[str, Any]] = []
        self._steps: dict[tuple[str, str], dict[str, Any]] = {}
        self._waiters: list[asyncio.Future[None]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._flushing = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="agentmill-journal")

    def add_event(self, event: EventRecord) -> None:
        self._events.append(asdict(event))

    def put_step(self, step: StepRecord) -> None:
        row = asdict(step)
        row["status"] = str(step.status)
        self._steps[(step.run_id, step.key)] = row

    async def commit(self) -> None:
        """Wait until every row queued before this call is committed."""
        if not (self._events or self._steps or self._waiters or self._flushing):
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._wake.set()
        await asyncio.shield(waiter)

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self._flush_interval)
            except TimeoutError:
                pass
            self._wake.clear()
            self._flushing = True
            try:
                await self._flush()
            finally:
                self._flushing = False
            if self._closing and not (self._events or self._steps or self._waiters):
                return

    async def _flush(self) -> None:
        event_rows, self._events = self._events, []
        step_rows, self._steps = list(self._steps.values()), {}
        waiters, self._waiters = self._waiters, []
        if not (event_rows or step_rows):
            _resolve(waiters, None)
            return
        try:
            async with self._engine.begin() as conn:
                await _write(conn, step_rows, event_rows)
        except (sa.exc.SQLAlchemyError, OSError) as exc:
            logger.error("journal write of %d rows failed: %s", len(event_rows), exc)
            _resolve(waiters, exc)
            return
        _resolve(waiters, None)


async def _write(
    conn: AsyncConnection, step_rows: list[dict[str, Any]], event_rows: list[dict[str, Any]]
) -> None:
    if step_rows:
        await conn.execute(_step_upsert(conn.dialect.name), step_rows)
    if event_rows:
        await conn.execute(events.insert(), event_rows)


def _step_upsert(dialect: str) -> Any:
    insert = postgresql.insert(steps) if dialect == "postgresql" else sqlite.insert(steps)
    return insert.on_conflict_do_update(
        index_elements=[steps.c.run_id, steps.c.key],
        set_={name: insert.excluded[name] for name in _STEP_UPDATE_COLUMNS},
    )


def _resolve(waiters: list[asyncio.Future[None]], error: BaseException | None) -> None:
    for waiter in waiters:
        if waiter.done():
            continue
        if error is None:
            waiter.set_result(None)
        else:
            waiter.set_exception(error)
