"""What runs cost: per run from its steps, and totals per workflow or tenant.

A call's cost is recorded on its step (`am_steps.cost_usd`); None means the model's price
is unknown, which is reported as such and never counted as zero. A call whose provider
reported no token usage was priced from an estimate (`usage.estimated`): totals including
one are shown as approximate (`~$0.0123`). A checkpoint copied from
an earlier run (a retry from a step) finished before its run was created: it was paid for
by that earlier run and is not counted again.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from agentmill.store.records import RunRecord, StepRecord, StepStatus
from agentmill.store.tables import runs, steps

__all__ = [
    "UNRECORDED_AGENT",
    "CostGroup",
    "CostSummary",
    "cost_totals",
    "group_column",
    "group_name",
    "run_cost",
    "run_costs",
    "spend_by_workflow",
]

CostGroup = Literal["workflow", "tenant", "agent", "model"]

UNRECORDED_AGENT = "(unrecorded)"
"""The agent group of calls recorded before steps kept their agent's name (schema 0006)."""


@dataclass(frozen=True, kw_only=True)
class CostSummary:
    """Known spend in US dollars, and how many calls made it up or had no known price."""

    usd: float = 0.0
    calls: int = 0
    unpriced_calls: int = 0
    estimated_calls: int = 0
    """Calls priced from estimated usage (their provider reported none)."""
    group: str | None = None
    """The workflow, tenant, agent or model a total belongs to."""

    @property
    def complete(self) -> bool:
        """Whether every call had a known price (so `usd` is the whole cost)."""
        return self.unpriced_calls == 0

    def describe(self) -> str:
        """`$0.0123`, or `$0.0123 + 2 calls of unknown price`, or `unknown`; `~$0.0123`
        when some calls were priced from estimated usage."""
        if self.calls and self.unpriced_calls == self.calls:
            return "unknown"
        text = f"{'~' if self.estimated_calls else ''}${self.usd:.4f}"
        if self.unpriced_calls:
            plural = "s" if self.unpriced_calls != 1 else ""
            text += f" + {self.unpriced_calls} call{plural} of unknown price"
        return text

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "usd": round(self.usd, 8),
            "calls": self.calls,
            "unpriced_calls": self.unpriced_calls,
            "estimated_calls": self.estimated_calls,
            "complete": self.complete,
        }
        if self.group is not None:
            data["group"] = self.group
        return data


def run_cost(run: RunRecord, records: Iterable[StepRecord]) -> CostSummary:
    """The cost of the calls `run` itself made."""
    usd, calls, unpriced, estimated = 0.0, 0, 0, 0
    for step in records:
        if not _charged_to(run, step):
            continue
        calls += 1
        if step.cost_usd is None:
            unpriced += 1
        else:
            usd += step.cost_usd
            estimated += bool((step.usage or {}).get("estimated"))
    return CostSummary(usd=usd, calls=calls, unpriced_calls=unpriced, estimated_calls=estimated)


_CHARGED = (StepStatus.SUCCEEDED, StepStatus.FAILED)
"""A failed step is charged for the model requests it finished (an agent loop records them;
other failed calls record no model)."""


def _charged_to(run: RunRecord, step: StepRecord) -> bool:
    if step.status not in _CHARGED or step.model is None:
        return False
    return step.finished_at is None or step.finished_at >= run.created_at


def _charged_calls() -> sa.Select[Any]:
    """Succeeded model calls joined with their runs, reused checkpoints left out."""
    return (
        sa.select()
        .select_from(steps.join(runs, runs.c.id == steps.c.run_id))
        .where(
            steps.c.status.in_([str(status) for status in _CHARGED]),
            steps.c.model.is_not(None),
            steps.c.finished_at >= runs.c.created_at,
        )
    )


_USD = sa.func.coalesce(sa.func.sum(steps.c.cost_usd), 0.0).label("usd")
_UNPRICED = sa.func.coalesce(
    sa.func.sum(sa.case((steps.c.cost_usd.is_(None), 1), else_=0)), 0
).label("unpriced")
_ESTIMATED_USAGE = sa.cast(steps.c.usage, sa.Text).like('%"estimated": true%')
"""Usage JSON as `Usage.to_json` writes it (json.dumps), flagged as an estimate."""
_ESTIMATED = sa.func.coalesce(
    sa.func.sum(sa.case((sa.and_(steps.c.cost_usd.is_not(None), _ESTIMATED_USAGE), 1), else_=0)),
    0,
).label("estimated")


def group_column(group_by: CostGroup) -> sa.ColumnElement[Any]:
    """The column a total or a series is grouped on (charged calls joined with runs)."""
    if group_by == "workflow":
        return runs.c.workflow
    if group_by == "tenant":
        return runs.c.tenant
    if group_by == "agent":
        return steps.c.agent
    return steps.c.model


def group_name(value: Any) -> str:
    """A group's name as shown: NULL (an agent not recorded) as `UNRECORDED_AGENT`."""
    return UNRECORDED_AGENT if value is None else str(value)


async def run_costs(
    engine: AsyncEngine, run_ids: Sequence[str], *, tenant: str | None
) -> dict[str, CostSummary]:
    """What each of these runs' own calls cost (the rules of `run_cost`), in one grouped
    query: a page of runs shows its costs without reading every step. Runs of another
    tenant than `tenant` (None: any) are left out; a run without charged calls costs 0."""
    if not run_ids:
        return {}
    query = (
        sa.select(runs.c.id, _USD, sa.func.count().label("calls"), _UNPRICED, _ESTIMATED)
        .select_from(steps.join(runs, runs.c.id == steps.c.run_id))
        .where(
            runs.c.id.in_(list(run_ids)),
            steps.c.status.in_([str(status) for status in _CHARGED]),
            steps.c.model.is_not(None),
            sa.or_(steps.c.finished_at.is_(None), steps.c.finished_at >= runs.c.created_at),
        )
        .group_by(runs.c.id)
    )
    known = sa.select(runs.c.id).where(runs.c.id.in_(list(run_ids)))
    if tenant is not None:
        query = query.where(runs.c.tenant == tenant)
        # `+ ""`: SQLite (no statistics) would walk the tenant's runs in a tenant index.
        known = known.where((runs.c.tenant + "") == tenant)
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
        found = {str(run_id): CostSummary() for run_id in (await conn.execute(known)).scalars()}
    for row in rows:
        found[str(row.id)] = _summary(row)
    return found


def _summary(row: Any, group: str | None = None) -> CostSummary:
    return CostSummary(
        group=group,
        usd=float(row.usd),
        calls=int(row.calls),
        unpriced_calls=int(row.unpriced or 0),
        estimated_calls=int(row.estimated or 0),
    )


def window_tenant(tenant: str) -> sa.ColumnElement[bool]:
    """The tenant condition of a query over a time window of calls. Written as an
    expression so that SQLite (which has no statistics) walks the window's steps by
    `ix_am_steps_finished` rather than every run of the tenant by its index; PostgreSQL
    plans from its statistics either way."""
    return (runs.c.tenant + "") == tenant


def charged_calls() -> sa.Select[Any]:
    """The calls a spend total counts, joined with their runs (for `store/spend.py`)."""
    return _charged_calls()


def usd_sum() -> sa.Label[Any]:
    """`usd`: the known spend of the selected calls."""
    return _USD


def unpriced_count() -> sa.Label[Any]:
    """`unpriced`: how many of the selected calls had no known price."""
    return _UNPRICED


def estimated_count() -> sa.Label[Any]:
    """`estimated`: how many were priced from estimated usage."""
    return _ESTIMATED


async def spend_by_workflow(engine: AsyncEngine) -> list[tuple[str, str, float, int]]:
    """(tenant, workflow, known usd, unpriced calls) over all time, for metrics."""
    query = (
        _charged_calls()
        .add_columns(runs.c.tenant, runs.c.workflow, _USD, _UNPRICED)
        .group_by(runs.c.tenant, runs.c.workflow)
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return [(str(r.tenant), str(r.workflow), float(r.usd), int(r.unpriced)) for r in rows]


async def cost_totals(
    engine: AsyncEngine,
    *,
    group_by: CostGroup,
    tenant: str | None,
    since: float | None = None,
    until: float | None = None,
) -> list[CostSummary]:
    """Totals per workflow, tenant, agent or model of calls finished in [since, until),
    most expensive first; `tenant` None covers every tenant (local administration only)."""
    column = group_column(group_by)
    query = (
        _charged_calls()
        .add_columns(
            column.label("group"), _USD, sa.func.count().label("calls"), _UNPRICED, _ESTIMATED
        )
        .group_by(column)
    )
    if tenant is not None:
        in_tenant = runs.c.tenant == tenant if since is None else window_tenant(tenant)
        query = query.where(in_tenant)
    if since is not None:
        query = query.where(steps.c.finished_at >= since)
    if until is not None:
        query = query.where(steps.c.finished_at < until)
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    totals = [_summary(row, group_name(row.group)) for row in rows]
    return sorted(totals, key=lambda total: (-total.usd, total.group or ""))
