"""/v1 approvals: list the gates waiting for a person, approve or reject them.

A decision is recorded once: a second one, one after the deadline, or one for a gate the
run has not reached answers 409 with the reason (who decided, and when).
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from agentmill.server.auth import Operator, Viewer
from agentmill.server.schemas import RunId, StepId
from agentmill.server.services import services
from agentmill.store.approvals import ApprovalRecord, ApprovalStatus

__all__ = ["ApprovalList", "ApprovalOut", "DecisionIn", "router"]

router = APIRouter(tags=["approvals"])


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
        )


class ApprovalList(BaseModel):
    items: list[ApprovalOut]


class DecisionIn(BaseModel):
    decision: Literal["approve", "reject"]
    comment: str | None = Field(
        default=None, max_length=10_000, pattern=r"^[^\x00]*$", description="No NUL characters"
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
    summary="Approve or reject a waiting gate (once)",
)
async def decide(
    request: Request, run_id: RunId, step_id: StepId, body: DecisionIn, principal: Operator
) -> ApprovalOut:
    record = await services(request).engine.decide(
        run_id,
        step_id,
        approve=body.decision == "approve",
        comment=body.comment,
        by=principal.key_id,
        tenant=principal.tenant,
    )
    return ApprovalOut.of(record)
