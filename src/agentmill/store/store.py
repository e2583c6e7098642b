"""Queries over runs, step checkpoints and events."""

from __future__ import annotations

import asyncio
import contextlib
import time
import zlib
from collections.abc import AsyncGenerator, Collection
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from agentmill.errors import NotFoundError
from agentmill.store.db import create_engine, create_sync_engine, database_error, migrate
from agentmill.store.journal import Journal
from agentmill.store.reconnect import reconnecting
from agentmill.store.records import (
    CallRecord,
    CallStatus,
    EventRecord,
    RunRecord,
    RunStatus,
    StepRecord,
    StepStatus,
)
from agentmill.store.tables import calls, events, runs, steps

__all__ = ["Store"]

DEFAULT_TENANT = "default"


class Store:
    """agentmill's tables: runs, step checkpoints (with the journal) and event log."""

    def __init__(self, engine: AsyncEngine, journal: Journal, *, url: str | None = None) -> None:
        self.engine = engine
        self.journal = journal
        self._url = url
        self._sync_engine: sa.Engine | None = None

    @property
    def sync_engine(self) -> sa.Engine:
        """A blocking engine for short transactions run whole on a worker thread: one
        thread hop per transaction instead of one per statement (budget reservations).
        On PostgreSQL its commits do not wait for the WAL flush, like the journal's."""
        if self._sync_engine is None:
            if self._url is None:
                raise RuntimeError("this store was opened without a URL")
            self._sync_engine = create_sync_engine(self._url, pool_size=8, fast=True)
        return self._sync_engine

    @classmethod
    async def open(cls, url: str, *, flush_interval: float = 0.05) -> Store:
        """Migrate the schema, connect, and start the journal."""
        try:
            await asyncio.to_thread(migrate, url)
        except (SQLAlchemyError, OSError) as exc:
            raise database_error(url, exc) from None
        store = cls(create_engine(url), Journal(url, flush_interval=flush_interval), url=url)
        store.journal.start()
        return store

    async def close(self) -> None:
        await self.journal.close()
        await self.engine.dispose()
        if self._sync_engine is not None:
            self._sync_engine.dispose()
            self._sync_engine = None

    @contextlib.asynccontextmanager
    async def exclusive(self, name: str) -> AsyncGenerator[bool]:
        """Whether this process holds the named lock for the block (PostgreSQL advisory
        lock; SQLite serves one process, which always holds it)."""
        if self.engine.dialect.name != "postgresql":
            yield True
            return
        key = zlib.crc32(name.encode())
        async with self.engine.connect() as conn:
            lock = sa.text("SELECT pg_try_advisory_lock(:key)")
            held = bool((await conn.execute(lock, {"key": key})).scalar())
            try:
                yield held
            finally:
                if held:
                    await conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": key})

    # runs

    @reconnecting
    async def create_run(self, run: RunRecord) -> None:
        values = {
            **run.__dict__,
            "status": str(run.status),
            "trigger_source": run.trigger_source,
        }
        try:
            async with self.engine.begin() as conn:
                await conn.execute(runs.insert().values(**values))
        except IntegrityError:
            # A try run again after its commit was applied but its answer lost
            # (`store/reconnect.py`) finds its own row: the run was created.
            if await self._stored_run(run.id) != run:
                raise

    async def _stored_run(self, run_id: str) -> RunRecord | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(runs).where(runs.c.id == run_id))).first()
        return None if row is None else _run_record(row._mapping)

    @reconnecting
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

    @reconnecting
    async def get_run_any(self, run_id: str) -> RunRecord:
        """A run of any tenant; for the engine's own use, never for a request."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(runs).where(runs.c.id == run_id))).first()
        if row is None:
            raise NotFoundError(f"no run with id {run_id!r}")
        return _run_record(row._mapping)

    @reconnecting
    async def list_runs(
        self,
        *,
        tenant: str = DEFAULT_TENANT,
        status: RunStatus | None = None,
        workflow: str | None = None,
        trigger_source: str | None = None,
        created_after: float | None = None,
        created_before: float | None = None,
        after: tuple[float, str] | None = None,
        limit: int = 50,
    ) -> list[RunRecord]:
        """Runs newest first; `after` is the (created_at, id) of the last run of a page.
        Each filter is served by an index (tenant, filter, created_at)."""
        query = sa.select(runs).where(runs.c.tenant == tenant)
        if status is not None:
            query = query.where(runs.c.status == str(status))
        if workflow is not None:
            query = query.where(runs.c.workflow == workflow)
        if trigger_source is not None:
            query = query.where(runs.c.trigger_source == trigger_source)
        if created_after is not None:
            query = query.where(runs.c.created_at >= created_after)
        if created_before is not None:
            query = query.where(runs.c.created_at < created_before)
        if after is not None:
            at, last_id = after
            query = query.where(
                sa.or_(
                    runs.c.created_at < at, sa.and_(runs.c.created_at == at, runs.c.id < last_id)
                )
            )
        query = query.order_by(runs.c.created_at.desc(), runs.c.id.desc()).limit(limit)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_run_record(row._mapping) for row in rows]

    @reconnecting
    async def run_by_idempotency_key(self, tenant: str, key: str) -> RunRecord | None:
        query = sa.select(runs).where(runs.c.tenant == tenant, runs.c.idempotency_key == key)
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return None if row is None else _run_record(row._mapping)

    @reconnecting
    async def active_runs_with_key(
        self, tenant: str, key: str, *, before: float | None = None, exclude: str | None = None
    ) -> list[str]:
        """Ids of pending or running runs sharing a concurrency key, oldest first."""
        query = sa.select(runs.c.id).where(
            runs.c.tenant == tenant,
            runs.c.concurrency_key == key,
            runs.c.status.in_([str(RunStatus.PENDING), str(RunStatus.RUNNING)]),
        )
        if before is not None:
            query = query.where(runs.c.created_at < before)
        if exclude is not None:
            query = query.where(runs.c.id != exclude)
        async with self.engine.connect() as conn:
            return list((await conn.execute(query.order_by(runs.c.created_at))).scalars())

    @reconnecting
    async def recoverable_runs(self, *, stale_before: float) -> list[RunRecord]:
        """Runs a worker should adopt: owned by a process whose heartbeat stopped before
        `stale_before`, or interrupted by a server shutdown."""
        in_flight = [str(RunStatus.PENDING), str(RunStatus.RUNNING)]
        orphaned = sa.and_(
            runs.c.status.in_(in_flight),
            runs.c.owner.is_not(None),
            runs.c.heartbeat_at < stale_before,
        )
        handed_back = sa.and_(runs.c.status == str(RunStatus.INTERRUPTED), runs.c.auto_resume)
        query = (
            sa.select(runs)
            .where(runs.c.served, sa.or_(orphaned, handed_back))
            .order_by(runs.c.created_at)
            .limit(100)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_run_record(row._mapping) for row in rows]

    @reconnecting
    async def queued_before(self, created_before: float) -> list[RunRecord]:
        """Pending runs owned by nobody (queued) since before `created_before`."""
        query = (
            sa.select(runs)
            .where(
                runs.c.status == str(RunStatus.PENDING),
                runs.c.owner.is_(None),
                runs.c.served,
                runs.c.created_at < created_before,
            )
            .order_by(runs.c.created_at)
            .limit(100)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_run_record(row._mapping) for row in rows]

    @reconnecting
    async def count_by_status(self) -> dict[str, int]:
        query = sa.select(runs.c.status, sa.func.count()).group_by(runs.c.status)
        async with self.engine.connect() as conn:
            return {row[0]: int(row[1]) for row in await conn.execute(query)}

    @reconnecting
    async def update_run(self, run_id: str, **values: Any) -> None:
        if "status" in values:
            values["status"] = str(values["status"])
        async with self.engine.begin() as conn:
            await conn.execute(runs.update().where(runs.c.id == run_id).values(**values))

    @reconnecting
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

    @reconnecting
    async def heartbeat(self, run_ids: list[str], *, owner: str) -> None:
        """Refresh the heartbeat of the runs `owner` still owns."""
        if not run_ids:
            return
        query = runs.update().where(runs.c.id.in_(run_ids), runs.c.owner == owner)
        async with self.engine.begin() as conn:
            await conn.execute(query.values(heartbeat_at=time.time()))

    @reconnecting
    async def owners(self, run_ids: list[str]) -> dict[str, str | None]:
        if not run_ids:
            return {}
        query = sa.select(runs.c.id, runs.c.owner).where(runs.c.id.in_(run_ids))
        async with self.engine.connect() as conn:
            return {row.id: row.owner for row in await conn.execute(query)}

    @reconnecting
    async def cancel_requested(self, run_ids: list[str]) -> set[str]:
        """Which of these runs someone asked to cancel."""
        if not run_ids:
            return set()
        query = sa.select(runs.c.id).where(runs.c.id.in_(run_ids), runs.c.cancel_requested)
        async with self.engine.connect() as conn:
            return set((await conn.execute(query)).scalars())

    # steps and events

    @reconnecting
    async def steps(self, run_id: str) -> list[StepRecord]:
        query = sa.select(steps).where(steps.c.run_id == run_id).order_by(steps.c.started_at)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_step_record(row._mapping) for row in rows]

    @reconnecting
    async def calls(self, run_id: str, step: str | None = None) -> list[CallRecord]:
        """The model requests and tool calls recorded for a run (or one step of it), in the
        order they started."""
        query = sa.select(calls).where(calls.c.run_id == run_id)
        if step is not None:
            query = query.where(calls.c.step == step)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query.order_by(calls.c.started_at))).all()
        return [_call_record(row._mapping) for row in rows]

    @reconnecting
    async def copy_steps(self, source: str, target: str, *, step_ids: set[str]) -> int:
        """Copy the finished checkpoints of `step_ids` from one run to another."""
        finished = [str(StepStatus.SUCCEEDED), str(StepStatus.SKIPPED)]
        query = sa.select(steps).where(
            steps.c.run_id == source, steps.c.step_id.in_(step_ids), steps.c.status.in_(finished)
        )
        async with self.engine.begin() as conn:
            rows = [{**row._mapping, "run_id": target} for row in await conn.execute(query)]
            if rows:
                await conn.execute(steps.insert(), rows)
        return len(rows)

    @reconnecting
    async def events(
        self,
        run_id: str,
        *,
        after: int = 0,
        limit: int | None = None,
        through: int | None = None,
        kinds: Collection[str] | None = None,
        steps: Collection[str] | None = None,
    ) -> list[EventRecord]:
        """The run's events after `after` (up to `through`), only of these `kinds` and step
        keys when given, in order; at most `limit`."""
        query = (
            sa.select(events)
            .where(events.c.run_id == run_id, events.c.seq > after)
            .order_by(events.c.seq)
        )
        if through is not None:
            query = query.where(events.c.seq <= through)
        if kinds is not None:
            query = query.where(events.c.kind.in_(list(kinds)))
        if steps is not None:
            query = query.where(events.c.step.in_(list(steps)))
        if limit is not None:
            query = query.limit(limit)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [EventRecord(**dict(row._mapping)) for row in rows]

    @reconnecting
    async def last_seq(self, run_id: str) -> int:
        query = sa.select(sa.func.max(events.c.seq)).where(events.c.run_id == run_id)
        async with self.engine.connect() as conn:
            return int((await conn.execute(query)).scalar() or 0)


def _run_record(row: Any) -> RunRecord:
    data = dict(row)
    data.pop("trigger_source", None)  # derived from `trigger`
    data["status"] = RunStatus(data["status"])
    data["cancel_requested"] = bool(data["cancel_requested"])
    data["auto_resume"] = bool(data["auto_resume"])
    data["served"] = bool(data["served"])
    return RunRecord(**data)


def _step_record(row: Any) -> StepRecord:
    data = dict(row)
    data["status"] = StepStatus(data["status"])
    return StepRecord(**data)


def _call_record(row: Any) -> CallRecord:
    data = dict(row)
    data["status"] = CallStatus(data["status"])
    return CallRecord(**data)
