"""How much of each budget of a tenant is used, for the costs page.

Budgets are enforced on ledger scopes (`store/budgets.py`, `policy/budget.py`):
- `tenant:<t>/day:<YYYY-MM-DD>` and `tenant:<t>/month:<YYYY-MM>`: the config's
  `budgets.tenants.<t>` (UTC calendar day and month);
- `key:<id>/day:…`, `key:<id>/month:…`: an API key's daily and monthly limits;
- `run:<id>`: the budget given at start, else the workflow's per-run budget;
- `run:<id>/agent:<name>`: an agent's per-run budget.

Each usage says what was spent and what calls in flight hold, with its limit when it can
be known: the tenant's from the config passed in (None when no config is loaded), a key's
from its row, a run's and an agent's from the run (its start budget and workflow snapshot).
The ledger counts only calls made while a limit applied: spend before a limit was set is
not in it (the cost totals have every call).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from agentmill.store.records import RunStatus
from agentmill.store.tables import api_keys, budget_ledger, runs

__all__ = ["BudgetLevel", "BudgetUsage", "budget_usage"]

BudgetLevel = Literal["tenant", "key", "run", "agent"]

_ACTIVE = [str(RunStatus.PENDING), str(RunStatus.RUNNING)]


@dataclass(frozen=True, kw_only=True)
class BudgetUsage:
    """One budget scope: what it has spent and holds, and its limits when known."""

    scope: str
    """The ledger scope, e.g. `tenant:acme/day:2026-12-08`."""
    level: BudgetLevel
    name: str
    """How people call it, e.g. "tenant 'acme' daily budget"."""
    spent_usd: float = 0.0
    spent_tokens: int = 0
    reserved_usd: float = 0.0
    """Held by calls in flight (their worst case), not yet settled."""
    reserved_tokens: int = 0
    limit_usd: float | None = None
    """None: no limit in dollars, or none that can be known here."""
    limit_tokens: int | None = None

    @property
    def used_fraction(self) -> float | None:
        """Spent plus reserved over the tighter known limit; None without a limit."""
        fractions: list[float] = []
        if self.limit_usd:
            fractions.append((self.spent_usd + self.reserved_usd) / self.limit_usd)
        if self.limit_tokens:
            fractions.append((self.spent_tokens + self.reserved_tokens) / self.limit_tokens)
        return max(fractions) if fractions else None


@dataclass(frozen=True)
class _Wanted:
    scope: str
    level: BudgetLevel
    name: str
    limits: Mapping[str, Any] | None
    always: bool
    """Listed even without a ledger row (its limit is configured)."""


async def budget_usage(
    engine: AsyncEngine,
    *,
    tenant: str,
    tenant_limits: Mapping[str, Any] | None,
    now: float | None = None,
    active_runs: int = 50,
) -> list[BudgetUsage]:
    """The tenant's budgets of the current UTC day and month (tenant and API keys) and
    those of its newest `active_runs` pending or running runs, with what each used.

    `tenant_limits`: the loaded config's `budgets.tenants.<tenant>` as JSON
    (`{"day": {"usd": 5}, "month": {...}}`), `{}` when it sets none, None when no config is
    loaded (the tenant's limits are then unknown)."""
    at = datetime.fromtimestamp(now, UTC) if now is not None else datetime.now(UTC)
    wanted = _periods(f"tenant:{tenant}", f"tenant '{tenant}'", "tenant", tenant_limits, at)
    async with engine.connect() as conn:
        for key_id, budget in await _key_budgets(conn, tenant):
            wanted += _periods(f"key:{key_id}", f"API key {key_id}", "key", budget, at)
        wanted += _run_scopes(await _active_runs(conn, tenant, active_runs))
        rows = await _ledger(conn, tenant, [w.scope for w in wanted])
    return [_usage(w, rows.get(w.scope)) for w in wanted if w.always or w.scope in rows]


def _periods(
    base: str,
    owner: str,
    level: BudgetLevel,
    limits: Mapping[str, Any] | None,
    at: datetime,
) -> list[_Wanted]:
    found: list[_Wanted] = []
    for period, scope, label in (
        ("day", f"{base}/day:{at:%Y-%m-%d}", "daily"),
        ("month", f"{base}/month:{at:%Y-%m}", "monthly"),
    ):
        spec = (limits or {}).get(period)
        found.append(_Wanted(scope, level, f"{owner} {label} budget", spec, bool(spec)))
    return found


async def _key_budgets(conn: Any, tenant: str) -> list[tuple[str, Mapping[str, Any]]]:
    query = (
        sa.select(api_keys.c.id, api_keys.c.budget)
        .where(api_keys.c.tenant == tenant, api_keys.c.revoked_at.is_(None))
        .order_by(api_keys.c.id)
    )
    rows = (await conn.execute(query)).all()
    return [(str(row.id), row.budget or {}) for row in rows]


async def _active_runs(conn: Any, tenant: str, limit: int) -> list[Any]:
    query = (
        sa.select(runs.c.id, runs.c.workflow, runs.c.budget, runs.c.snapshot)
        .where(runs.c.tenant == tenant, runs.c.status.in_(_ACTIVE))
        .order_by(runs.c.created_at.desc(), runs.c.id.desc())
        .limit(limit)
    )
    return list((await conn.execute(query)).all())


def _run_scopes(rows: Sequence[Any]) -> list[_Wanted]:
    found: list[_Wanted] = []
    for row in rows:
        snapshot: Mapping[str, Any] = row.snapshot or {}
        workflow_budget = (snapshot.get("workflow") or {}).get("budget")
        if row.budget:
            name = f"run {row.id} budget (given at start)"
            found.append(_Wanted(f"run:{row.id}", "run", name, row.budget, True))
        else:
            name = f"workflow '{row.workflow}' per-run budget (run {row.id})"
            found.append(
                _Wanted(f"run:{row.id}", "run", name, workflow_budget, bool(workflow_budget))
            )
        for agent, spec in sorted((snapshot.get("agents") or {}).items()):
            budget = (spec or {}).get("budget")
            if budget:
                name = f"agent '{agent}' per-run budget (run {row.id})"
                found.append(_Wanted(f"run:{row.id}/agent:{agent}", "agent", name, budget, True))
    return found


async def _ledger(conn: Any, tenant: str, scopes: list[str]) -> dict[str, Any]:
    if not scopes:
        return {}
    query = sa.select(budget_ledger).where(
        budget_ledger.c.tenant == tenant, budget_ledger.c.scope.in_(scopes)
    )
    return {str(row.scope): row for row in (await conn.execute(query)).all()}


def _usage(wanted: _Wanted, row: Any) -> BudgetUsage:
    limits = wanted.limits or {}
    usd, tokens = limits.get("usd"), limits.get("tokens")
    return BudgetUsage(
        scope=wanted.scope,
        level=wanted.level,
        name=wanted.name,
        spent_usd=float(row.spent_usd) if row is not None else 0.0,
        spent_tokens=int(row.spent_tokens) if row is not None else 0,
        reserved_usd=float(row.reserved_usd) if row is not None else 0.0,
        reserved_tokens=int(row.reserved_tokens) if row is not None else 0,
        limit_usd=float(usd) if usd is not None else None,
        limit_tokens=int(tokens) if tokens is not None else None,
    )
