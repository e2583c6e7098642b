"""/v1/costs: what the caller's tenant spent, per workflow, over a time window."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request

from agentmill.server.auth import Viewer
from agentmill.server.schemas import CostOut, CostTotals
from agentmill.server.services import services
from agentmill.store import cost_totals

__all__ = ["router"]

router = APIRouter(tags=["costs"])

_TIME = Query(ge=0, le=1e11, description="Epoch seconds; calls finished at or after / before")


@router.get("/costs", summary="Spend of this tenant per workflow (or in total)")
async def costs(
    request: Request,
    principal: Viewer,
    group_by: Annotated[
        Literal["workflow", "tenant"], Query(description="`tenant` gives one total")
    ] = "workflow",
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
