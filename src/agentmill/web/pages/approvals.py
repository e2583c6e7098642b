"""The approvals page: every gate of the tenant waiting for a person, decided in place.

A gate is an approval step (`sign-off`) or a tool call that needs approval
(`work#t1.1`, with the tool, its arguments and the model's reason). Operators and admins
approve or reject with a comment, and may approve a tool call with edited arguments;
viewers see the same list without the forms. The list polls every 3 s (htmx) so gates
reached anywhere appear and gates decided elsewhere leave; the form being filled in is
kept across polls (`hx-preserve`).
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Query, Request, Response
from fastapi.responses import RedirectResponse
from sqlalchemy.ext.asyncio import AsyncEngine

from agentmill.errors import InputError
from agentmill.server.schemas import ID_PATTERN, NAME_PATTERN
from agentmill.server.services import services
from agentmill.store.approvals import ApprovalRecord, ApprovalStatus, ApprovalStore
from agentmill.store.keys import Role
from agentmill.store.run_names import RunName, run_names
from agentmill.web.auth import CsrfChecked, SignedIn, WebUser, require_web_role
from agentmill.web.forms import edited_arguments
from agentmill.web.templating import render

__all__ = ["DECIDED_SHOWN", "PENDING_SHOWN", "router"]

router = APIRouter()

PENDING_SHOWN = 100
"""Waiting gates shown at once, newest first; the page says how many more wait."""
DECIDED_SHOWN = 20
"""Recently decided (approved, rejected or expired) gates shown below."""
_FINISHED = (ApprovalStatus.APPROVED, ApprovalStatus.REJECTED, ApprovalStatus.EXPIRED)

RunField = Annotated[str, Form(max_length=64, pattern=ID_PATTERN)]
GateField = Annotated[str, Form(max_length=400, pattern=NAME_PATTERN)]


@router.get("/approvals")
async def approvals_page(
    request: Request,
    user: SignedIn,
    fragment: Annotated[str | None, Query(pattern="^pending$")] = None,
    decided: Annotated[Literal["approved", "rejected"] | None, Query()] = None,
    run: Annotated[str | None, Query(max_length=64, pattern=ID_PATTERN)] = None,
    gate: Annotated[str | None, Query(max_length=400, pattern=NAME_PATTERN)] = None,
) -> Response:
    context = await _context(request, user, with_decided=fragment is None)
    if fragment:
        return render(request, "_approval_list.html", user, **context)
    notice = None
    if decided and run and gate and await _was_decided(request, user, run, gate, decided):
        notice = f"{decided.capitalize()} {gate} of run {run}."
    return render(request, "approvals.html", user, notice=notice, **context)


async def _was_decided(request: Request, user: WebUser, run: str, gate: str, how: str) -> bool:
    """Whether the gate of the redirect's query string was decided so (a link could claim
    anything)."""
    engine = services(request).engine.store.engine
    row = await ApprovalStore(engine).get(run, gate, tenant=user.principal.tenant)
    return row is not None and str(row.status) == how


@router.post("/approvals/decide")
async def decide(
    request: Request,
    user: CsrfChecked,
    run: RunField,
    gate: GateField,
    decision: Annotated[Literal["approve", "reject"], Form()],
    comment: Annotated[str, Form(max_length=10_000)] = "",
    arguments: Annotated[str, Form(max_length=100_000)] = "",
) -> Response:
    require_web_role(user, Role.OPERATOR)
    app = services(request)
    tenant = user.principal.tenant
    approve = decision == "approve"
    try:
        edited = await _edited_arguments(app.engine.store.engine, run, gate, arguments, tenant)
        await app.engine.decide(
            run,
            gate,
            approve=approve,
            comment=comment.replace("\x00", "").strip() or None,
            by=user.actor,
            tenant=tenant,
            arguments=edited,
        )
    except InputError as exc:
        return await _refused(request, user, run, gate, str(exc), comment, arguments)
    done = {"decided": "approved" if approve else "rejected", "run": run, "gate": gate}
    return RedirectResponse(f"/approvals?{urlencode(done)}", status_code=303)


async def _edited_arguments(
    engine: AsyncEngine, run: str, gate: str, text: str, tenant: str
) -> dict[str, Any] | None:
    """The arguments typed in the form, or None when left empty or unchanged (the model's).

    Raises InputError for text that is not a JSON object.
    """
    value = edited_arguments(text)
    if value is None:
        return None
    row = await ApprovalStore(engine).get(run, gate, tenant=tenant)
    if row is not None and row.arguments == value:
        return None
    return value


async def _refused(
    request: Request,
    user: WebUser,
    run: str,
    gate: str,
    message: str,
    comment: str,
    arguments: str,
) -> Response:
    """The page again, the error shown by the gate's form and the typed values kept (422)."""
    context = await _context(request, user, with_decided=True)
    context["typed"] = {"key": _form_id(run, gate), "comment": comment, "arguments": arguments}
    context["error"] = message
    context["notice"] = None
    return render(request, "approvals.html", user, status=422, **context)


async def _context(request: Request, user: WebUser, *, with_decided: bool) -> dict[str, Any]:
    app = services(request)
    tenant = user.principal.tenant
    store = ApprovalStore(app.engine.store.engine)
    shown = await store.list(tenant=tenant, status=ApprovalStatus.PENDING, limit=PENDING_SHOWN)
    waiting = len(shown)
    if waiting == PENDING_SHOWN:  # more may wait than are read
        waiting = await store.count(tenant=tenant, status=ApprovalStatus.PENDING)
    decided = await _recently_decided(app.engine.store.engine, tenant) if with_decided else []
    names = await run_names(
        app.engine.store.engine, {row.run_id for row in [*shown, *decided]}, tenant=tenant
    )
    return {
        "pending": [_gate(row, names.get(row.run_id)) for row in shown],
        "more_pending": waiting - len(shown),
        "decided": [_gate(row, names.get(row.run_id)) for row in decided],
        "deciders": ", ".join(str(role) for role in Role if role.allows(Role.OPERATOR)),
        "typed": None,
        "error": None,
    }


async def _recently_decided(engine: AsyncEngine, tenant: str) -> list[ApprovalRecord]:
    store = ApprovalStore(engine)
    found: list[ApprovalRecord] = []
    for status in _FINISHED:
        found += await store.list(tenant=tenant, status=status, limit=DECIDED_SHOWN)
    found.sort(key=lambda row: (row.decided_at or row.created_at, row.step_id), reverse=True)
    return found[:DECIDED_SHOWN]


def _gate(row: ApprovalRecord, run: RunName | None) -> dict[str, Any]:
    return {
        "run_id": row.run_id,
        "gate": row.step_id,
        "key": _form_id(row.run_id, row.step_id),
        "workflow": run.workflow if run is not None else "",
        "run_status": str(run.status) if run is not None else "",
        "status": str(row.status),
        "prompt": row.prompt,
        "tool": row.tool,
        "arguments": _pretty(row.arguments) if row.arguments is not None else None,
        "edited_arguments": (
            _pretty(row.edited_arguments) if row.edited_arguments is not None else None
        ),
        "reason": row.reason,
        "on_timeout": row.on_timeout,
        "created_at": row.created_at,
        "expires_at": row.expires_at,
        "remaining": max(0.0, row.expires_at - time.time()),
        "decided_at": row.decided_at,
        "decided_by": row.decided_by,
        "comment": row.comment,
    }


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)


def _form_id(run_id: str, gate: str) -> str:
    """A stable HTML id for a gate's form (gate ids hold `#` and `.`)."""
    return "gate-" + hashlib.sha256(f"{run_id}\x00{gate}".encode()).hexdigest()[:16]
