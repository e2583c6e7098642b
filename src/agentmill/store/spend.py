"""Spend over time: the cost of charged calls per hour or day, per workflow, agent, model
or tenant, for the costs page's charts and `GET /v1/costs/series`.

The same calls as `store/costs.py` (unknown prices counted apart, never as zero; reused
checkpoints not charged twice; estimated ones flagged), bucketed by when the call finished
(`am_steps.finished_at`, indexed) in UTC hours or days. Buckets are computed in SQL the same
way on SQLite and PostgreSQL: epoch seconds divided by the bucket's width, rounded down.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from agentmill.store.costs import (
    CostGroup,
    charged_calls,
    estimated_count,
    group_column,
    group_name,
    unpriced_count,
    usd_sum,
    window_tenant,
)
from agentmill.store.tables import steps

__all__ = ["BUCKET_SECONDS", "Bucket", "SeriesPoint", "cost_series"]

Bucket = Literal["hour", "day"]

BUCKET_SECONDS: dict[Bucket, int] = {"hour": 3600, "day": 86400}
"""A bucket's width; epoch seconds start at a UTC midnight, so days are UTC days."""


@dataclass(frozen=True, kw_only=True)
class SeriesPoint:
    """What the calls of one group finished in one bucket cost."""

    bucket_start: float
    """Epoch seconds of the bucket's start (a UTC hour or midnight)."""
    group: str
    usd: float
    """Sum of the calls whose price is known."""
    calls: int
    unpriced_calls: int
    """Calls whose price is unknown (not counted in `usd`)."""
    estimated_calls: int = 0
    """Calls priced from estimated usage (their provider reported none)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "bucket_start": self.bucket_start,
            "group": self.group,
            "usd": round(self.usd, 8),
            "calls": self.calls,
            "unpriced_calls": self.unpriced_calls,
            "estimated_calls": self.estimated_calls,
        }


class _FloorDiv(FunctionElement[int]):
    """floor(value / width) for non-negative epoch seconds, as an integer."""

    inherit_cache = True
    type = sa.BigInteger()


@compiles(_FloorDiv)
def _floor_div(element: _FloorDiv, compiler: Any, **kw: Any) -> str:
    value, width = list(element.clauses)
    return (
        f"CAST(FLOOR({compiler.process(value, **kw)} / {compiler.process(width, **kw)}) AS BIGINT)"
    )


@compiles(_FloorDiv, "sqlite")
def _floor_div_sqlite(element: _FloorDiv, compiler: Any, **kw: Any) -> str:
    # SQLite may be built without FLOOR; CAST truncates, which floors non-negative values.
    value, width = list(element.clauses)
    return f"CAST({compiler.process(value, **kw)} / {compiler.process(width, **kw)} AS INTEGER)"


async def cost_series(
    engine: AsyncEngine,
    *,
    tenant: str | None,
    group_by: CostGroup,
    bucket: Bucket,
    since: float,
    until: float,
) -> list[SeriesPoint]:
    """Spend per bucket and group of calls finished in [since, until), oldest bucket
    first, then by group; buckets without calls are absent. `tenant` None covers every
    tenant (the metrics administrator only)."""
    width = BUCKET_SECONDS[bucket]
    index = _FloorDiv(steps.c.finished_at, sa.literal_column(str(width), sa.Integer))
    column = group_column(group_by)
    query = (
        charged_calls()
        .add_columns(
            index.label("bucket"),
            column.label("group"),
            usd_sum(),
            sa.func.count().label("calls"),
            unpriced_count(),
            estimated_count(),
        )
        .where(steps.c.finished_at >= since, steps.c.finished_at < until)
        .group_by(index, column)
    )
    if tenant is not None:
        query = query.where(window_tenant(tenant))
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    points = [
        SeriesPoint(
            bucket_start=float(int(row.bucket) * width),
            group=group_name(row.group),
            usd=float(row.usd),
            calls=int(row.calls),
            unpriced_calls=int(row.unpriced or 0),
            estimated_calls=int(row.estimated or 0),
        )
        for row in rows
    ]
    return sorted(points, key=lambda point: (point.bucket_start, point.group))
