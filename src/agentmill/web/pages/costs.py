"""The costs page: spend over time per workflow, agent, model (and tenant, for the metrics
administrator), totals per group, and the tenant's budgets with how much of each is used.

Everyone sees their own tenant's spend; grouping by tenant covers every tenant and is for
admins of `settings.metrics_tenant` only (like /metrics). Unknown prices stay unknown:
a group whose calls all lack a price shows "unknown", never $0. The chart, the totals and
the budgets poll every 5 s (htmx) so a finished run's cost appears without a reload.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request, Response
from markupsafe import Markup

from agentmill.server.services import Services, services
from agentmill.spec.loader import LoadedProject
from agentmill.store import BUCKET_SECONDS, Bucket, BudgetUsage, budget_usage, cost_series
from agentmill.store.costs import CostGroup, CostSummary, cost_totals
from agentmill.store.keys import Role
from agentmill.web.auth import SignedIn, WebForbidden, WebUser
from agentmill.web.charts import meter, stacked_bars
from agentmill.web.templating import render

__all__ = ["GROUPS", "WINDOWS", "Window", "router"]

router = APIRouter()

Window = Literal["24h", "7d", "30d", "90d"]
GROUPS: tuple[CostGroup, ...] = ("workflow", "agent", "model", "tenant")


@dataclass(frozen=True, kw_only=True)
class WindowSpec:
    label: str
    bucket: Bucket
    buckets: int


WINDOWS: dict[Window, WindowSpec] = {
    "24h": WindowSpec(label="last 24 hours", bucket="hour", buckets=24),
    "7d": WindowSpec(label="last 7 days", bucket="day", buckets=7),
    "30d": WindowSpec(label="last 30 days", bucket="day", buckets=30),
    "90d": WindowSpec(label="last 90 days", bucket="day", buckets=90),
}


def window_bounds(window: Window, now: float) -> tuple[float, float]:
    """[since, until): the current hour or UTC day and the ones before it."""
    spec = WINDOWS[window]
    width = BUCKET_SECONDS[spec.bucket]
    current = (int(now) // width) * width
    return float(current - (spec.buckets - 1) * width), float(current + width)


def may_see_all_tenants(user: WebUser, metrics_tenant: str) -> bool:
    """Admins of the metrics tenant see spend across tenants (as /metrics does)."""
    return user.may(Role.ADMIN) and user.principal.tenant == metrics_tenant


@router.get("/costs")
async def costs_page(
    request: Request,
    user: SignedIn,
    window: Annotated[Window, Query()] = "7d",
    group: Annotated[CostGroup, Query()] = "workflow",
    fragment: Annotated[str | None, Query(pattern="^live$")] = None,
) -> Response:
    app = services(request)
    all_tenants = may_see_all_tenants(user, app.settings.metrics_tenant)
    if group == "tenant" and not all_tenants:
        raise WebForbidden(
            "spend per tenant covers every tenant: only admins of the metrics tenant "
            f"('{app.settings.metrics_tenant}') may see it"
        )
    context = await _live(app, user.principal.tenant, window, group)
    context.update(
        window=window,
        group=group,
        windows=[(name, spec.label) for name, spec in WINDOWS.items()],
        groups=[g for g in GROUPS if g != "tenant" or all_tenants],
        live_url="/costs?" + urlencode({"window": window, "group": group, "fragment": "live"}),
    )
    template = "_costs_live.html" if fragment else "costs.html"
    return render(request, template, user, **context)


async def _live(app: Services, tenant: str, window: Window, group: CostGroup) -> dict[str, Any]:
    since, until = window_bounds(window, time.time())
    scope = None if group == "tenant" else tenant
    engine = app.engine.store.engine
    series = await cost_series(
        engine, tenant=scope, group_by=group, bucket=WINDOWS[window].bucket, since=since,
        until=until,
    )  # fmt: skip
    totals = await cost_totals(engine, group_by=group, tenant=scope, since=since, until=until)
    usages = await budget_usage(
        engine, tenant=tenant, tenant_limits=_tenant_limits(app.project, tenant)
    )
    return {
        "chart": stacked_bars(
            [(p.bucket_start, p.group, p.usd) for p in series],
            dimension=group,
            label=f"Spend per {group}, {WINDOWS[window].label}",
        ),
        "totals": [_total(total) for total in totals],
        "overall": _overall(totals),
        "since": since,
        "until": until,
        "budgets": [_budget(usage) for usage in usages],
        "configured": _configured_budgets(app.project),
        "tenant": tenant,
    }


def _tenant_limits(project: LoadedProject | None, tenant: str) -> dict[str, Any] | None:
    if project is None:
        return None
    periods = project.spec.budgets.tenants.get(tenant)
    return periods.model_dump(mode="json", exclude_none=True) if periods is not None else {}


def _total(total: CostSummary) -> dict[str, Any]:
    return {
        "group": total.group or "",
        "cost": total.describe(),
        "calls": total.calls,
        "unpriced": total.unpriced_calls,
        "complete": total.complete,
    }


def _overall(totals: list[CostSummary]) -> str:
    combined = CostSummary(
        usd=sum(t.usd for t in totals),
        calls=sum(t.calls for t in totals),
        unpriced_calls=sum(t.unpriced_calls for t in totals),
        estimated_calls=sum(t.estimated_calls for t in totals),
    )
    return combined.describe() if combined.calls else ""


def _budget(usage: BudgetUsage) -> dict[str, Any]:
    meters: list[Markup] = []
    if usage.limit_usd is not None:
        used = usage.spent_usd + usage.reserved_usd
        meters.append(meter(used, usage.limit_usd, unit="$", label=usage.name))
    if usage.limit_tokens is not None:
        used = float(usage.spent_tokens + usage.reserved_tokens)
        meters.append(meter(used, float(usage.limit_tokens), unit="tokens", label=usage.name))
    return {
        "name": usage.name,
        "level": usage.level,
        "meters": meters,
        "spent_usd": usage.spent_usd,
        "spent_tokens": usage.spent_tokens,
        "reserved_usd": usage.reserved_usd,
        "fraction": usage.used_fraction,
    }


def _configured_budgets(project: LoadedProject | None) -> list[dict[str, Any]]:
    """The per-run limits the config sets on workflows and agents (used by each run)."""
    if project is None:
        return []
    found: list[dict[str, Any]] = []
    spec = project.spec
    for kind, items in (("workflow", spec.workflows), ("agent", spec.agents)):
        for name, item in sorted(items.items()):
            if item.budget is not None:
                found.append({"kind": kind, "name": name, "usd": item.budget.usd,
                              "tokens": item.budget.tokens})  # fmt: skip
    return found
