"""/v1 approvals: list the gates waiting for a person, approve or reject them.

A decision is recorded once: a second one, one after the deadline, or one for a gate the
run has not reached answers 409 with the reason (who decided, and when).

A tool call that needs approval is a gate too, `<step key>#<call id>` (`#` is `%23` in the
path), showing the tool, its arguments and the model's reason; approving it may replace
the arguments (`arguments`, a JSON object), which a gate step refuses with 422.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, Field

from agentmill.server.auth import Operator, Viewer
from agentmill.server.schemas import NAME_PATTERN, RunId
from agentmill.server.services import services
from agentmill.store.approvals import ApprovalRecord, ApprovalStatus

__all__ = ["ApprovalList", "ApprovalOut", "DecisionIn", "router"]

router = APIRouter(tags=["approvals"])

GateId = Annotated[
    str,
    Path(
        max_length=400,
        pattern=NAME_PATTERN,
        description="A gate step's id, or a tool call's gate `<step key>#<call id>`",
    ),
]


class ApprovalOut(BaseModel):
    run_id: str
    step_id: str
    status: ApprovalStatus
    prompt: str = Field(description="The gate's prompt, rendered with the run's values")
    comment: str | None
    decided_by: str | None = Field(description="Id of the API key (or CLI user) that decided")
    created_at: float
    expires_at: float
    decided_at: float | None = Field(description="When it was decided or expired")
    on_timeout: Literal["reject", "fail"]
    tool: str | None = Field(default=None, description="A tool call's gate: the tool")
    arguments: dict[str, Any] | None = Field(
        default=None, description="A tool call's gate: the arguments the model asked for"
    )
    reason: str | None = Field(
        default=None, description="A tool call's gate: what the model wrote with the call"
    )
    edited_arguments: dict[str, Any] | None = Field(
        default=None, description="Approved with these arguments instead of the model's"
    )

    @classmethod
    def of(cls, record: ApprovalRecord) -> ApprovalOut:
        return cls(
            run_id=record.run_id,
            step_id=record.step_id,
            status=record.status,
            prompt=record.prompt,
            comment=record.comment,
            decided_by=record.decided_by,
            created_at=record.created_at,
            expires_at=record.expires_at,
            decided_at=record.decided_at,
            on_timeout="fail" if record.on_timeout == "fail" else "reject",
            tool=record.tool,
            arguments=record.arguments,
            reason=record.reason,
            edited_arguments=record.edited_arguments,
        )


class ApprovalList(BaseModel):
    items: list[ApprovalOut]


class DecisionIn(BaseModel):
    decision: Literal["approve", "reject"]
    comment: str | None = Field(
        default=None, max_length=10_000, pattern=r"^[^\x00]*$", description="No NUL characters"
    )
    arguments: dict[str, Any] | None = Field(
        default=None,
        description="A tool call's gate, approved: run the call with these arguments instead",
    )


@router.get("/approvals", summary="List this tenant's approvals, newest first")
async def list_approvals(
    request: Request,
    principal: Viewer,
    status: Annotated[ApprovalStatus | None, Query(description="Only this status")] = None,
) -> ApprovalList:
    found = await services(request).engine.approvals(tenant=principal.tenant, status=status)
    return ApprovalList(items=[ApprovalOut.of(record) for record in found])


@router.get("/runs/{run_id}/approvals", summary="List a run's approvals")
async def run_approvals(request: Request, run_id: RunId, principal: Viewer) -> ApprovalList:
    found = await services(request).engine.approvals(tenant=principal.tenant, run_id=run_id)
    return ApprovalList(items=[ApprovalOut.of(record) for record in found])


@router.post(
    "/runs/{run_id}/approvals/{step_id}",
    summary="Approve or reject a waiting gate or tool call (once)",
)
async def decide(
    request: Request, run_id: RunId, step_id: GateId, body: DecisionIn, principal: Operator
) -> ApprovalOut:
    record = await services(request).engine.decide(
        run_id,
        step_id,
        approve=body.decision == "approve",
        comment=body.comment,
        by=principal.key_id,
        tenant=principal.tenant,
        arguments=body.arguments,
    )
    return ApprovalOut.of(record)
