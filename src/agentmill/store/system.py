"""What the system page shows: the workers running runs and their heartbeats, the runs
waiting for a worker, recent webhook deliveries, and the database in use.

A worker is known by the runs it owns (`am_runs.owner`, with its host, pid and the
heartbeat it refreshes on them); a worker running nothing has no trace in the tables, so
it is not listed.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from agentmill.store.deliveries import DeliveryRecord, DeliveryStore
from agentmill.store.records import RunStatus
from agentmill.store.tables import runs

__all__ = [
    "DatabaseInfo",
    "WorkerInfo",
    "database_in_use",
    "queue_depth",
    "recent_deliveries",
    "workers",
]

_ACTIVE = [str(RunStatus.PENDING), str(RunStatus.RUNNING)]


@dataclass(frozen=True, kw_only=True)
class WorkerInfo:
    """A process owning pending or running runs."""

    owner: str
    host: str | None
    pid: int | None
    last_heartbeat: float | None
    """The newest heartbeat on its runs (epoch seconds); None before the first."""
    running_runs: int


@dataclass(frozen=True, kw_only=True)
class DatabaseInfo:
    dialect: str
    """`sqlite` or `postgresql`."""
    url: str
    """The URL with its password hidden."""


async def workers(engine: AsyncEngine, *, tenant: str | None = None) -> list[WorkerInfo]:
    """The owners of active runs, most recent heartbeat first; with `tenant`, only its
    runs are counted (and only workers running some of them are listed)."""
    query = (
        sa.select(
            runs.c.owner,
            runs.c.owner_host,
            runs.c.owner_pid,
            sa.func.max(runs.c.heartbeat_at).label("last_heartbeat"),
            sa.func.count().label("running"),
        )
        .where(runs.c.status.in_(_ACTIVE), runs.c.owner.is_not(None))
        .group_by(runs.c.owner, runs.c.owner_host, runs.c.owner_pid)
    )
    if tenant is not None:
        query = query.where(runs.c.tenant == tenant)
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    found = [
        WorkerInfo(
            owner=str(row.owner),
            host=row.owner_host,
            pid=row.owner_pid,
            last_heartbeat=row.last_heartbeat,
            running_runs=int(row.running),
        )
        for row in rows
    ]
    return sorted(found, key=lambda w: (-(w.last_heartbeat or 0.0), w.owner))


async def queue_depth(engine: AsyncEngine, *, tenant: str | None = None) -> int:
    """Runs waiting for a worker: pending and owned by nobody (of `tenant`, or all)."""
    query = (
        sa.select(sa.func.count())
        .select_from(runs)
        .where(runs.c.status == str(RunStatus.PENDING), runs.c.owner.is_(None))
    )
    if tenant is not None:
        query = query.where(runs.c.tenant == tenant)
    async with engine.connect() as conn:
        return int((await conn.execute(query)).scalar() or 0)


async def recent_deliveries(
    engine: AsyncEngine, tenant: str, limit: int = 20
) -> list[DeliveryRecord]:
    """The tenant's webhook deliveries, newest first, with their outcome and runs."""
    return await DeliveryStore(engine, tenant=tenant).recent(limit=limit)


def database_in_use(engine: AsyncEngine) -> DatabaseInfo:
    """The dialect and URL (password hidden) of the store's database."""
    return DatabaseInfo(
        dialect=engine.dialect.name, url=engine.url.render_as_string(hide_password=True)
    )
