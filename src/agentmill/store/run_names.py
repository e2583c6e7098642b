"""What a list of other records needs to know of their runs: workflow and status by run id.

Lists that point at runs (approvals waiting, for one) show each run's workflow; one query
by primary key for a whole page instead of one per row.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from agentmill.store.reconnect import reconnecting
from agentmill.store.records import RunStatus
from agentmill.store.tables import runs

__all__ = ["RunName", "run_names"]

_BATCH = 500
"""Ids per query (SQLite allows 32,766 bound parameters; PostgreSQL far more)."""


@dataclass(frozen=True, kw_only=True)
class RunName:
    workflow: str
    status: RunStatus


async def run_names(
    engine: AsyncEngine, run_ids: Collection[str], *, tenant: str
) -> dict[str, RunName]:
    """The workflow and status of each of `run_ids` of `tenant` (others' runs left out)."""
    wanted = sorted(set(run_ids))
    found: dict[str, RunName] = {}
    for start in range(0, len(wanted), _BATCH):
        found.update(await _batch(engine, wanted[start : start + _BATCH], tenant))
    return found


@reconnecting
async def _batch(engine: AsyncEngine, run_ids: list[str], tenant: str) -> dict[str, RunName]:
    query = sa.select(runs.c.id, runs.c.workflow, runs.c.status).where(
        runs.c.id.in_(run_ids), runs.c.tenant == tenant
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return {row.id: RunName(workflow=row.workflow, status=RunStatus(row.status)) for row in rows}
