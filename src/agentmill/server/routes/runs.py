"""/v1/runs: start, list, show, cancel, resume and retry runs of the server's workflows."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
import re
from typing import Annotated, Any, cast

from fastapi import APIRouter, Header, Query, Request, Response, status

from agentmill.server.auth import Operator, Viewer
from agentmill.server.problems import ApiProblem
from agentmill.server.schemas import (
    ID_PATTERN,
    NAME_PATTERN,
    CallList,
    CallOut,
    RetryRequest,
    RunDetail,
    RunId,
    RunList,
    RunOut,
    RunStart,
)
from agentmill.server.services import services
from agentmill.store import RunRecord, RunStatus, StepRecord
from agentmill.store.call_summary import summarize_call

__all__ = ["decode_cursor", "encode_cursor", "router"]

router = APIRouter(tags=["runs"])

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=200,
        description="Retrying with the same key returns the run the first request started",
    ),
]

_ID = re.compile(ID_PATTERN)


@router.post(
    "/runs",
    status_code=status.HTTP_201_CREATED,
    summary="Start a run",
    responses={
        200: {"model": RunOut, "description": "The run this Idempotency-Key already started"},
        201: {"description": "The run was created"},
    },
)
async def start_run(
    request: Request,
    response: Response,
    body: RunStart,
    principal: Operator,
    idempotency_key: IdempotencyKey = None,
) -> RunOut:
    """Validate the inputs against the workflow and start it; answers with the new run."""
    app = services(request)
    project = app.require_project()
    store = app.engine.store
    existed = idempotency_key is not None and (
        await store.run_by_idempotency_key(principal.tenant, idempotency_key) is not None
    )
    run = await app.engine.submit(
        project.spec,
        body.workflow,
        body.inputs,
        config_path=str(app.config_path) if app.config_path is not None else None,
        tenant=principal.tenant,
        idempotency_key=idempotency_key,
        trigger={"source": "api", "key": principal.key_id},
        budget=body.budget,
        api_key_id=principal.key_id,
    )
    response.headers["Location"] = f"/v1/runs/{run.id}"
    if existed:
        response.status_code = status.HTTP_200_OK
    return RunOut.from_record(run)


@router.get("/runs", summary="List runs, newest first")
async def list_runs(
    request: Request,
    principal: Viewer,
    run_status: Annotated[RunStatus | None, Query(alias="status")] = None,
    workflow: Annotated[str | None, Query(max_length=200, pattern=NAME_PATTERN)] = None,
    trigger: Annotated[
        str | None,
        Query(
            max_length=20,
            pattern=ID_PATTERN,
            description="Where runs came from: `cli`, `api`, `github`, `mcp`, `retry`, ...",
        ),
    ] = None,
    created_after: Annotated[
        float | None, Query(allow_inf_nan=False, description="Epoch seconds, inclusive")
    ] = None,
    created_before: Annotated[
        float | None, Query(allow_inf_nan=False, description="Epoch seconds, exclusive")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[
        str | None, Query(max_length=200, description="`next_cursor` of the previous page")
    ] = None,
) -> RunList:
    """One page of this tenant's runs; filters combine."""
    found = await services(request).engine.store.list_runs(
        tenant=principal.tenant,
        status=run_status,
        workflow=workflow,
        trigger_source=trigger,
        created_after=created_after,
        created_before=created_before,
        after=decode_cursor(cursor) if cursor is not None else None,
        limit=limit + 1,
    )
    page = found[:limit]
    more = len(found) > limit
    return RunList(
        items=[RunOut.from_record(run) for run in page],
        next_cursor=encode_cursor(page[-1]) if more else None,
    )


@router.get("/runs/{run_id}", summary="Show a run with its steps")
async def show_run(request: Request, run_id: RunId, principal: Viewer) -> RunDetail:
    store = services(request).engine.store
    # Three reads at once (on three pooled connections) answer in about the time of one;
    # the steps and events of another tenant's run are read but never shown.
    found = await asyncio.gather(
        store.get_run(run_id, tenant=principal.tenant),
        store.steps(run_id),
        store.last_seq(run_id),
        return_exceptions=True,
    )
    for result in found:
        if isinstance(result, BaseException):
            raise result
    run, steps, last_seq = cast(tuple[RunRecord, list[StepRecord], int], tuple(found))
    return RunDetail.from_records(run, steps, last_seq)


@router.get("/runs/{run_id}/calls", summary="List a run's model requests and tool calls")
async def list_calls(
    request: Request,
    run_id: RunId,
    principal: Viewer,
    step: Annotated[
        str | None,
        Query(
            max_length=300,
            pattern=NAME_PATTERN,
            description="Only the calls of this step key (`step` or `step[index]`)",
        ),
    ] = None,
) -> CallList:
    """Each model request and tool call an agent with tools made, in the order they started:
    tool arguments as a redacted preview, results as their size."""
    store = services(request).engine.store
    await store.get_run(run_id, tenant=principal.tenant)  # another tenant's run: 404
    records = await store.calls(run_id, step)
    return CallList(items=[CallOut.from_summary(summarize_call(record)) for record in records])


@router.post(
    "/runs/{run_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Cancel a run (it stops at its next step boundary)",
)
async def cancel_run(request: Request, run_id: RunId, principal: Operator) -> RunOut:
    run = await services(request).engine.cancel(run_id, tenant=principal.tenant)
    return RunOut.from_record(run)


@router.post(
    "/runs/{run_id}/resume",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Resume an interrupted, failed or cancelled run",
)
async def resume_run(request: Request, run_id: RunId, principal: Operator) -> RunOut:
    """Finished calls are not made again; the run continues where it stopped."""
    run = await services(request).engine.resume(run_id, tenant=principal.tenant)
    return RunOut.from_record(run)


@router.post(
    "/runs/{run_id}/retry",
    status_code=status.HTTP_201_CREATED,
    summary="Retry a run from a step, as a new run",
)
async def retry_run(
    request: Request, response: Response, run_id: RunId, body: RetryRequest, principal: Operator
) -> RunOut:
    """A new run re-runs `from_step` and every step after it; the steps before it reuse
    the recorded outputs of this run (no model calls)."""
    retried = await services(request).engine.retry(run_id, body.from_step, tenant=principal.tenant)
    response.headers["Location"] = f"/v1/runs/{retried.id}"
    return RunOut.from_record(retried)


# cursors


def encode_cursor(run: RunRecord) -> str:
    """An opaque cursor: the (created_at, id) of the last run of a page, url-safe."""
    raw = json.dumps([run.created_at, run.id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    """The (created_at, id) a cursor holds; 422 for anything this API did not hand out."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value: Any = json.loads(raw)
    except (binascii.Error, ValueError):
        value = None
    if _valid_position(value):
        return float(value[0]), value[1]
    raise ApiProblem(
        422, "invalid-cursor", "this cursor is not one the API returned: pass next_cursor as is"
    )


def _valid_position(value: Any) -> bool:
    if not isinstance(value, list) or len(value) != 2:
        return False
    at, run_id = value
    numeric = isinstance(at, int | float) and not isinstance(at, bool)
    return (
        numeric
        and math.isfinite(at)
        and isinstance(run_id, str)
        and len(run_id) <= 64
        and _ID.fullmatch(run_id) is not None
    )
