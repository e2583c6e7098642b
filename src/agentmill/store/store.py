"""Queries over runs, step checkpoints and events."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from agentmill.errors import NotFoundError
from agentmill.store.db import create_engine, database_error, migrate
from agentmill.store.journal import Journal
from agentmill.store.records import EventRecord, RunRecord, RunStatus, StepRecord, StepStatus
from agentmill.store.tables import events, runs, steps

__all__ = ["Store"]

DEFAULT_TENANT = "default"


class Store:
    """agentmill's tables: runs, step checkpoints (with the journal) and event log."""

    def __init__(self, engine: AsyncEngine, journal: Journal) -> None:
        self.engine = engine
        self.journal = journal

    @classmethod
    async def open(cls, url: str, *, flush_interval: float = 0.05) -> Store:
        """Migrate the schema, connect, and start the journal."""
        try:
            await asyncio.to_thread(migrate, url)
        except (SQLAlchemyError, OSError) as exc:
            raise database_error(url, exc) from None
        store = cls(create_engine(url), Journal(url, flush_interval=flush_interval))
        store.journal.start()
        return store

    async def close(self) -> None:
        await self.journal.close()
        await self.engine.dispose()

    # runs

    async def create_run(self, run: RunRecord) -> None:
        values = {**run.__dict__, "status": str(run.status)}
        async with self.engine.begin() as conn:
            await conn.execute(runs.insert().values(**values))

    async def get_run(self, run_id: str, *, tenant: str = DEFAULT_TENANT) -> RunRecord:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(runs).where(runs.c.id == run_id, runs.c.tenant == tenant)
                )
            ).first()
        if row is None:
            raise NotFoundError(f"no run with id {run_id!r}: list runs with `agentmill runs list`")
        return _run_record(row._mapping)

    async def get_run_any(self, run_id: str) -> RunRecord:
        """A run of any tenant; for the engine's own use, never for a request."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(runs).where(runs.c.id == run_id))).first()
        if row is None:
            raise NotFoundError(f"no run with id {run_id!r}")
        return _run_record(row._mapping)

    async def list_runs(
        self,
        *,
        tenant: str = DEFAULT_TENANT,
        status: RunStatus | None = None,
        workflow: str | None = None,
        limit: int = 50,
    ) -> list[RunRecord]:
        query = sa.select(runs).where(runs.c.tenant == tenant)
        if status is not None:
            query = query.where(runs.c.status == str(status))
        if workflow is not None:
            query = query.where(runs.c.workflow == workflow)
        query = query.order_by(runs.c.created_at.desc()).limit(limit)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_run_record(row._mapping) for row in rows]

    async def update_run(self, run_id: str, **values: Any) -> None:
        if "status" in values:
            values["status"] = str(values["status"])
        async with self.engine.begin() as conn:
            await conn.execute(runs.update().where(runs.c.id == run_id).values(**values))

    async def update_run_if_owner(
        self,
        run_id: str,
        expected_owner: str | None,
        *,
        expected_status: RunStatus | None = None,
        **values: Any,
    ) -> bool:
        """Update the run only if its owner (and status) are still as expected."""
        if "status" in values:
            values["status"] = str(values["status"])
        owned = runs.c.owner.is_(None) if expected_owner is None else runs.c.owner == expected_owner
        query = runs.update().where(runs.c.id == run_id, owned)
        if expected_status is not None:
            query = query.where(runs.c.status == str(expected_status))
        async with self.engine.begin() as conn:
            result = await conn.execute(query.values(**values))
        return result.rowcount == 1

    async def heartbeat(self, run_ids: list[str], *, owner: str) -> None:
        """Refresh the heartbeat of the runs `owner` still owns."""
        if not run_ids:
            return
        query = runs.update().where(runs.c.id.in_(run_ids), runs.c.owner == owner)
        async with self.engine.begin() as conn:
            await conn.execute(query.values(heartbeat_at=time.time()))

    async def owners(self, run_ids: list[str]) -> dict[str, str | None]:
        if not run_ids:
            return {}
        query = sa.select(runs.c.id, runs.c.owner).where(runs.c.id.in_(run_ids))
        async with self.engine.connect() as conn:
            return {row.id: row.owner for row in await conn.execute(query)}

    async def cancel_requested(self, run_ids: list[str]) -> set[str]:
        """Which of these runs someone asked to cancel."""
        if not run_ids:
            return set()
        query = sa.select(runs.c.id).where(runs.c.id.in_(run_ids), runs.c.cancel_requested)
        async with self.engine.connect() as conn:
            return set((await conn.execute(query)).scalars())

    # steps and events

    async def steps(self, run_id: str) -> list[StepRecord]:
        query = sa.select(steps).where(steps.c.run_id == run_id).order_by(steps.c.started_at)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_step_record(row._mapping) for row in rows]

    async def events(
        self, run_id: str, *, after: int = 0, limit: int | None = None
    ) -> list[EventRecord]:
        query = (
            sa.select(events)
            .where(events.c.run_id == run_id, events.c.seq > after)
            .order_by(events.c.seq)
        )
        if limit is not None:
            query = query.limit(limit)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [EventRecord(**dict(row._mapping)) for row in rows]

    async def last_seq(self, run_id: str) -> int:
        query = sa.select(sa.func.max(events.c.seq)).where(events.c.run_id == run_id)
        async with self.engine.connect() as conn:
            return int((await conn.execute(query)).scalar() or 0)


def _run_record(row: Any) -> RunRecord:
    data = dict(row)
    data["status"] = RunStatus(data["status"])
    data["cancel_requested"] = bool(data["cancel_requested"])
    return RunRecord(**data)


def _step_record(row: Any) -> StepRecord:
    data = dict(row)
    data["status"] = StepStatus(data["status"])
    return StepRecord(**data)
