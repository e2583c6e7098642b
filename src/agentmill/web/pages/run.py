"""A run's page: its DAG, a panel per step, live through an event stream; its actions.

GET /runs/{id} renders the run as of its last event N (run_view.read_run); static/run.js
then follows GET /runs/{id}/stream?after=N, the same Server-Sent Events as
/v1/runs/{id}/events, with the session instead of an API key. Operators (and admins)
cancel, resume, retry from a step and decide the run's pending gates with plain forms
answered by a redirect (Post/Redirect/Get).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Form, Header, Path, Query, Request, Response
from fastapi.responses import RedirectResponse

from agentmill.server import sse
from agentmill.server.routes.events import stream_events
from agentmill.server.schemas import NAME_PATTERN, RunId
from agentmill.server.services import services
from agentmill.store.approvals import ApprovalRecord, ApprovalStatus
from agentmill.store.keys import Role
from agentmill.web.auth import CsrfChecked, SignedIn, require_web_role
from agentmill.web.forms import edited_arguments
from agentmill.web.pages.run_view import StepPanel, as_text, read_run
from agentmill.web.templating import render

__all__ = ["router"]

router = APIRouter()

FRAGMENTS = {"summary": "_run_summary.html"}


@router.get("/runs/{run_id}")
async def run_page(
    request: Request,
    run_id: RunId,
    user: SignedIn,
    fragment: Annotated[str | None, Query(pattern="^summary$")] = None,
) -> Response:
    engine = services(request).engine
    tenant = user.principal.tenant

    def gates() -> Awaitable[list[ApprovalRecord]]:
        return engine.approvals(tenant=tenant, run_id=run_id, status=ApprovalStatus.PENDING)

    view = await read_run(engine.store, run_id, tenant=tenant, gates=gates)
    template = FRAGMENTS[fragment] if fragment else "run.html"
    return render(
        request,
        template,
        user,
        view=view,
        run=view.run,
        blank=StepPanel(key="", step_id="", state="pending"),
        as_text=as_text,
        gate_url=gate_url,
    )


def gate_url(run_id: str, gate: str) -> str:
    """Where a gate's decision is posted (`#` and the rest of the id percent-encoded)."""
    return f"/runs/{run_id}/approvals/{quote(gate, safe='')}"


@router.get("/runs/{run_id}/stream")
async def run_stream(
    request: Request,
    run_id: RunId,
    user: SignedIn,
    after: Annotated[int, Query(ge=0, le=sse.MAX_SEQ)] = 0,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=40)] = None,
) -> Response:
    """The run's events after `after` (or Last-Event-ID) as Server-Sent Events."""
    app = services(request)
    run = await app.engine.store.get_run(run_id, tenant=user.principal.tenant)
    start = sse.resume_point(last_event_id, after)

    async def session_alive() -> bool:  # signed out, expired or its key revoked: stop
        return await app.sessions.find(user.token) is not None

    return await stream_events(
        app, run, start, key_id=user.principal.key_id, still_allowed=session_alive
    )


def _back(run_id: str) -> Response:
    return RedirectResponse(f"/runs/{run_id}", status_code=303)


@router.post("/runs/{run_id}/cancel")
async def cancel(request: Request, run_id: RunId, user: CsrfChecked) -> Response:
    require_web_role(user, Role.OPERATOR)
    await services(request).engine.cancel(run_id, tenant=user.principal.tenant)
    return _back(run_id)


@router.post("/runs/{run_id}/resume")
async def resume(request: Request, run_id: RunId, user: CsrfChecked) -> Response:
    require_web_role(user, Role.OPERATOR)
    await services(request).engine.resume(run_id, tenant=user.principal.tenant)
    return _back(run_id)


@router.post("/runs/{run_id}/retry")
async def retry(
    request: Request,
    run_id: RunId,
    user: CsrfChecked,
    from_step: Annotated[str, Form(max_length=200, pattern=NAME_PATTERN)],
) -> Response:
    require_web_role(user, Role.OPERATOR)
    retried = await services(request).engine.retry(run_id, from_step, tenant=user.principal.tenant)
    return _back(retried.id)


GateParam = Annotated[str, Path(max_length=400, pattern=NAME_PATTERN)]


@router.post("/runs/{run_id}/approvals/{gate:path}")
async def decide(
    request: Request,
    run_id: RunId,
    gate: GateParam,
    user: CsrfChecked,
    decision: Annotated[str, Form(pattern="^(approve|reject)$")],
    comment: Annotated[str, Form(max_length=10_000)] = "",
    arguments: Annotated[str, Form(max_length=100_000)] = "",
) -> Response:
    require_web_role(user, Role.OPERATOR)
    approve = decision == "approve"
    await services(request).engine.decide(
        run_id,
        gate,
        approve=approve,
        comment=comment.replace("\x00", "") or None,
        by=user.actor,
        tenant=user.principal.tenant,
        arguments=edited_arguments(arguments) if approve else None,
    )
    return _back(run_id)
