"""The runs page: newest first, filtered by workflow, status, trigger and date; live rows.

The first page's rows poll every 2 s (htmx), so runs started anywhere (another terminal,
the API, a webhook) appear and their status and cost change without a reload. Later
pages are still: they are history.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request, Response

from agentmill.server.routes.runs import decode_cursor, encode_cursor
from agentmill.server.schemas import NAME_PATTERN
from agentmill.server.services import services
from agentmill.store import RunRecord, RunStatus
from agentmill.store.costs import CostSummary, run_costs
from agentmill.store.records import trigger_source_of
from agentmill.web.auth import SignedIn
from agentmill.web.templating import render

__all__ = ["PAGE_SIZE", "RunFilters", "router"]

router = APIRouter()

PAGE_SIZE = 50
TRIGGERS = ("cli", "api", "dashboard", "github", "mcp", "retry", "schedule", "webhook")


@dataclass(frozen=True, kw_only=True)
class RunFilters:
    workflow: str | None = None
    status: RunStatus | None = None
    trigger: str | None = None
    since: dt.date | None = None
    until: dt.date | None = None

    def query(self, **extra: str) -> str:
        """These filters (and `extra`) as a query string, empty values left out."""
        values = {
            "workflow": self.workflow,
            "status": self.status,
            "trigger": self.trigger,
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            **extra,
        }
        return urlencode({name: str(value) for name, value in values.items() if value})


def _day_start(day: dt.date | None, *, days: int = 0) -> float | None:
    if day is None:
        return None
    try:
        moment = dt.datetime.combine(day, dt.time(), dt.UTC) + dt.timedelta(days=days)
    except OverflowError:  # the day after 9999-12-31: no bound
        return None
    return moment.timestamp()


Text = Annotated[str | None, Query(max_length=200)]


@router.get("/")
@router.get("/runs")
async def runs_page(
    request: Request,
    user: SignedIn,
    workflow: Annotated[str | None, Query(max_length=200, pattern=NAME_PATTERN)] = None,
    status: Annotated[RunStatus | None, Query()] = None,
    trigger: Annotated[str | None, Query(max_length=20, pattern=NAME_PATTERN)] = None,
    since: Annotated[dt.date | None, Query()] = None,
    until: Annotated[dt.date | None, Query()] = None,
    cursor: Text = None,
    fragment: Annotated[str | None, Query(pattern="^rows$")] = None,
) -> Response:
    filters = RunFilters(
        workflow=workflow or None, status=status, trigger=trigger or None, since=since, until=until
    )
    page = await _page(request, user.principal.tenant, filters, cursor)
    template = "_run_rows.html" if fragment else "runs.html"
    return render(request, template, user, filters=filters, cursor=cursor, **page)


async def _page(
    request: Request, tenant: str, filters: RunFilters, cursor: str | None
) -> dict[str, Any]:
    app = services(request)
    store = app.engine.store
    found = await store.list_runs(
        tenant=tenant,
        status=filters.status,
        workflow=filters.workflow,
        trigger_source=filters.trigger,
        created_after=_day_start(filters.since),
        created_before=_day_start(filters.until, days=1),
        after=decode_cursor(cursor) if cursor else None,
        limit=PAGE_SIZE + 1,
    )
    runs = found[:PAGE_SIZE]
    costs = await run_costs(store.engine, [run.id for run in runs], tenant=tenant)
    more = len(found) > PAGE_SIZE
    workflows = sorted(app.project.spec.workflows) if app.project is not None else []
    return {
        "runs": [_row(run, costs.get(run.id)) for run in runs],
        "next_cursor": encode_cursor(runs[-1]) if more else None,
        "workflows": workflows,
        "statuses": [str(status) for status in RunStatus],
        "triggers": TRIGGERS,
        "live": cursor is None,
    }


def _row(run: RunRecord, cost: CostSummary | None) -> dict[str, Any]:
    ended = run.finished_at
    began = run.started_at or run.created_at
    return {
        "id": run.id,
        "workflow": run.workflow,
        "status": str(run.status),
        "trigger": trigger_source_of(run.trigger),
        "created_at": run.created_at,
        "duration": (ended - began) if ended is not None else None,
        "cost": cost.describe() if cost is not None and cost.calls else "",
        "error": run.error,
    }
