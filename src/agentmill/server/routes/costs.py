"""/v1/costs: what the caller's tenant spent, per workflow, agent or model, over a time
window, and the same per hour or day (`/v1/costs/series`)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request

from agentmill.server.auth import Viewer
from agentmill.server.problems import ApiProblem
from agentmill.server.schemas import CostOut, CostSeries, CostTotals, SeriesPointOut
from agentmill.server.services import services
from agentmill.store import BUCKET_SECONDS, Bucket, cost_series, cost_totals

__all__ = ["MAX_SERIES_BUCKETS", "router"]

router = APIRouter(tags=["costs"])

MAX_SERIES_BUCKETS = 2000
"""A series spans at most this many buckets (about 83 days of hours, 5 years of days)."""

_TIME = Query(ge=0, le=1e11, description="Epoch seconds; calls finished at or after / before")
_SERIES_TIME = Query(ge=0, le=1e11, description="Epoch seconds; calls finished in [since, until)")

Group = Literal["workflow", "agent", "model", "tenant"]


@router.get("/costs", summary="Spend of this tenant per workflow, agent or model (or in total)")
async def costs(
    request: Request,
    principal: Viewer,
    group_by: Annotated[Group, Query(description="`tenant` gives one total")] = "workflow",
    since: Annotated[float | None, _TIME] = None,
    until: Annotated[float | None, _TIME] = None,
) -> CostTotals:
    totals = await cost_totals(
        services(request).engine.store.engine,
        group_by=group_by,
        tenant=principal.tenant,
        since=since,
        until=until,
    )
    return CostTotals(
        group_by=group_by,
        since=since,
        until=until,
        items=[CostOut.from_summary(total) for total in totals],
    )


@router.get("/costs/series", summary="Spend of this tenant per hour or day")
async def series(
    request: Request,
    principal: Viewer,
    since: Annotated[float, _SERIES_TIME],
    until: Annotated[float, _SERIES_TIME],
    group_by: Annotated[Group, Query(description="`tenant` gives one line")] = "workflow",
    bucket: Annotated[Bucket, Query(description="UTC hours or days")] = "day",
) -> CostSeries:
    if until <= since:
        raise ApiProblem(422, "invalid-window", "`until` must be after `since`")
    if (until - since) / BUCKET_SECONDS[bucket] > MAX_SERIES_BUCKETS:
        raise ApiProblem(
            422,
            "window-too-long",
            f"a series spans at most {MAX_SERIES_BUCKETS} buckets: "
            "shorten the window or use `bucket=day`",
        )
    points = await cost_series(
        services(request).engine.store.engine,
        tenant=principal.tenant,
        group_by=group_by,
        bucket=bucket,
        since=since,
        until=until,
    )
    return CostSeries(
        group_by=group_by,
        bucket=bucket,
        since=since,
        until=until,
        items=[SeriesPointOut.from_point(point) for point in points],
    )
