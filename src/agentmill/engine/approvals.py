"""Approval gates: a run waits durably for a person's decision, and deciding wakes it.

The `am_approvals` row is the source of truth (`store/approvals.py`). A DBOS message on
the topic `approval:<step>` only wakes the waiting gate early: the gate re-reads the row
after every wake-up and at least every `MAX_WAIT` seconds, so a lost message, or one sent
to a workflow of the run that has since been replaced, costs latency, never a decision.
The deadline is fixed when the gate is first reached and survives restarts.

A decided gate is checkpointed in `am_steps` like an agent call, with the decision as its
output, so a resumed or retried run never asks again.

A tool call that needs approval waits at a gate of its own, `<step key>#<call id>`, on the
same rows and the same wait (`engine/tool_approvals.py`); deciding one may edit the call's
arguments.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from agentmill.engine.events import RunEmitter
from agentmill.engine.plan import RunPlan
from agentmill.errors import (
    InputError,
    InvalidStateError,
    NotFoundError,
    RunFailure,
    StepFailed,
)
from agentmill.logs import current_step
from agentmill.spec.models import ApprovalSpec
from agentmill.store import RunRecord, StepRecord, StepStatus, Store
from agentmill.store.approvals import ApprovalRecord, ApprovalStatus, ApprovalStore

__all__ = [
    "MAX_WAIT",
    "ApprovalRecord",
    "ApprovalStatus",
    "Gate",
    "decide_approval",
    "list_approvals",
    "run_gate",
    "topic_for",
    "wait_for_decision",
]

logger = logging.getLogger("agentmill.engine")

MAX_WAIT = 300.0
"""Longest wait between two reads of the row, whatever wakes the gate (or does not)."""

TOOL_GATE_MARK = "#"
"""Separates a tool call's gate id: `<step key>#<call id>` (step ids never contain it)."""


def topic_for(step_id: str) -> str:
    """The DBOS message topic a gate listens on."""
    return f"approval:{step_id}"


@dataclass(frozen=True, kw_only=True)
class Gate:
    """One approval step of a run, with its prompt already rendered."""

    run_id: str
    tenant: str
    step_id: str
    approval: ApprovalSpec
    prompt: str


# waiting (inside the run's workflow)


async def run_gate(
    gate: Gate, *, store: Store, emitter: RunEmitter, previous: StepRecord | None
) -> StepRecord:
    """Wait for the gate's decision (or expiry) and return its committed checkpoint."""
    if previous is not None and previous.status is StepStatus.SUCCEEDED:
        return previous
    current_step.set(gate.step_id)
    approvals = ApprovalStore(store.engine)
    row = await _open(gate, approvals, previous)
    attempt = (previous.attempt if previous is not None else 0) + 1
    _announce(gate, row, attempt, store=store, emitter=emitter)
    row = await wait_for_decision(approvals, row)
    return await _finish(gate, row, attempt, store=store, emitter=emitter)


async def _open(
    gate: Gate, approvals: ApprovalStore, previous: StepRecord | None
) -> ApprovalRecord:
    """The gate's row: created on first arrival (fixing the deadline), else the stored one."""
    now = time.time()
    row = await approvals.create(
        ApprovalRecord(
            run_id=gate.run_id,
            step_id=gate.step_id,
            tenant=gate.tenant,
            status=ApprovalStatus.PENDING,
            prompt=gate.prompt,
            on_timeout=gate.approval.on_timeout,
            created_at=now,
            expires_at=now + gate.approval.timeout,
        )
    )
    failed_before = previous is not None and previous.status is StepStatus.FAILED
    if row.status is ApprovalStatus.EXPIRED and failed_before:
        # The gate failed on its timeout and the run was resumed: ask again.
        await approvals.reopen(
            gate.run_id, gate.step_id, created_at=now, expires_at=now + gate.approval.timeout
        )
        row = await _read(approvals, gate.run_id, gate.step_id)
    return row


def _announce(
    gate: Gate, row: ApprovalRecord, attempt: int, *, store: Store, emitter: RunEmitter
) -> None:
    store.journal.put_step(
        _record(gate, StepStatus.RUNNING, attempt, started_at=row.created_at, finished_at=None)
    )
    extra: dict[str, Any] = {"supersedes": attempt - 1} if attempt > 1 else {}
    emitter.emit("step_started", step=gate.step_id, attempt=attempt, gate=True, **extra)
    if row.status is ApprovalStatus.PENDING:
        emitter.emit(
            "approval_requested",
            step=gate.step_id,
            attempt=attempt,
            prompt=row.prompt,
            expires_at=row.expires_at,
            on_timeout=row.on_timeout,
        )


async def wait_for_decision(approvals: ApprovalStore, row: ApprovalRecord) -> ApprovalRecord:
    """Inside the run's workflow: until the row is decided or expired (then marked so).

    The wake-up message is only a hint: the row is re-read after each, and at least every
    `MAX_WAIT` seconds.
    """
    from agentmill.engine.runtime import recv_decision

    while row.status is ApprovalStatus.PENDING:
        remaining = row.expires_at - time.time()
        if remaining <= 0:
            await approvals.expire(row.run_id, row.step_id)
        else:
            await recv_decision(topic_for(row.step_id), min(remaining, MAX_WAIT))
        row = await _read(approvals, row.run_id, row.step_id)
    return row


async def _read(approvals: ApprovalStore, run_id: str, step_id: str) -> ApprovalRecord:
    row = await approvals.get(run_id, step_id)
    if row is None:
        raise RunFailure(f"the approval row of step '{step_id}' disappeared")
    return row


async def _finish(
    gate: Gate, row: ApprovalRecord, attempt: int, *, store: Store, emitter: RunEmitter
) -> StepRecord:
    """Checkpoint the outcome: a decision (or an expiry counted as a rejection) succeeds;
    an expiry with `on_timeout: fail` fails the step."""
    decision = {
        "approved": row.status is ApprovalStatus.APPROVED,
        "comment": row.comment,
        "by": row.decided_by,
        "status": str(row.status),
    }
    emitter.emit("approval_decided", step=gate.step_id, attempt=attempt, **decision)
    finished = time.time()
    if row.status is ApprovalStatus.EXPIRED and row.on_timeout == "fail":
        reason = (
            f"no decision before the approval deadline {_iso(row.expires_at)} (on_timeout: fail)"
        )
        error = str(StepFailed(gate.step_id, reason))
        record = _record(
            gate, StepStatus.FAILED, attempt, started_at=row.created_at, finished_at=finished
        )
        record = replace(record, error=error)
        emitter.emit(
            "step_failed", step=gate.step_id, attempt=attempt, error=error, error_kind="timeout"
        )
    else:
        record = _record(
            gate, StepStatus.SUCCEEDED, attempt, started_at=row.created_at, finished_at=finished
        )
        record = replace(record, output=decision)
        emitter.emit(
            "step_finished",
            step=gate.step_id,
            attempt=attempt,
            gate=True,
            elapsed=round(finished - row.created_at, 4),
        )
    store.journal.put_step(record)
    await store.journal.commit()
    return record


def _record(
    gate: Gate,
    status: StepStatus,
    attempt: int,
    *,
    started_at: float,
    finished_at: float | None,
) -> StepRecord:
    return StepRecord(
        run_id=gate.run_id,
        key=gate.step_id,
        step_id=gate.step_id,
        item_index=None,
        status=status,
        attempt=attempt,
        started_at=started_at,
        finished_at=finished_at,
    )


# deciding (API, CLI)


async def decide_approval(
    store: Store,
    run_id: str,
    step_id: str,
    *,
    approve: bool,
    comment: str | None,
    by: str,
    tenant: str,
    notify: bool,
    arguments: dict[str, Any] | None = None,
) -> ApprovalRecord:
    """Record a decision once, then wake the waiting run (with `notify`: DBOS launched).

    `arguments`: a tool call's gate approved with edited arguments (a JSON object).

    Raises NotFoundError for an unknown run or step (or another tenant's), InvalidStateError
    when the gate is not waiting yet, was decided, or has expired, and InputError for
    arguments that are not an object or are given for a gate that is no tool call.
    """
    run = await store.get_run(run_id, tenant=tenant)
    approvals = ApprovalStore(store.engine)
    if run.status.finished:
        await _refuse_for_finished(approvals, run, step_id, tenant=tenant)
    if arguments is not None:
        await _check_edit(approvals, run, step_id, arguments, approve=approve, tenant=tenant)
    won = await approvals.decide(
        run_id,
        step_id,
        tenant=tenant,
        approve=approve,
        comment=comment,
        by=by,
        arguments=arguments,
    )
    row = await approvals.get(run_id, step_id, tenant=tenant)
    if row is None:
        raise await _not_waiting(approvals, run, step_id)
    if not won:
        raise await _refusal(approvals, row)
    if notify:
        await _wake(store, row)
    return row


async def list_approvals(
    store: Store,
    *,
    tenant: str,
    status: ApprovalStatus | None = None,
    run_id: str | None = None,
) -> list[ApprovalRecord]:
    """A tenant's approvals, newest first; a run of another tenant is not found."""
    if run_id is not None:
        await store.get_run(run_id, tenant=tenant)
    return await ApprovalStore(store.engine).list(tenant=tenant, status=status, run_id=run_id)


async def _refuse_for_finished(
    approvals: ApprovalStore, run: RunRecord, step_id: str, *, tenant: str
) -> None:
    """A finished run: say why the decision is refused (decided, expired, or nothing waits)."""
    row = await approvals.get(run.id, step_id, tenant=tenant)
    if row is None:
        raise await _not_waiting(approvals, run, step_id)
    if row.status is not ApprovalStatus.PENDING:
        raise await _refusal(approvals, row)
    raise InvalidStateError(
        f"run {run.id} is {run.status}: nothing waits for this approval; "
        "resume the run first if it should go on"
    )


async def _check_edit(
    approvals: ApprovalStore,
    run: RunRecord,
    step_id: str,
    arguments: Any,
    *,
    approve: bool,
    tenant: str,
) -> None:
    """Edited arguments fit only a tool call's gate being approved, and are an object."""
    if not approve:
        raise InputError(
            "edited arguments come with an approval: reject without them, or approve the "
            "call with them"
        )
    if not isinstance(arguments, dict):
        raise InputError(
            f"edited arguments must be a JSON object (name: value), got "
            f'{type(arguments).__name__}: e.g. {{"path": "notes.md"}}'
        )
    row = await approvals.get(run.id, step_id, tenant=tenant)
    if row is not None and not row.is_tool_call:
        raise InputError(
            f"{step_id!r} of run {run.id} is an approval step, not a tool call: only a tool "
            "call's arguments can be edited; decide it without them"
        )


async def _not_waiting(approvals: ApprovalStore, run: RunRecord, step_id: str) -> Exception:
    if TOOL_GATE_MARK in step_id:
        pending = await approvals.list(
            tenant=run.tenant, run_id=run.id, status=ApprovalStatus.PENDING
        )
        waiting = ", ".join(row.step_id for row in pending if row.is_tool_call) or "none"
        return NotFoundError(
            f"run {run.id} has no tool call {step_id!r} waiting for approval "
            f"(tool calls waiting: {waiting})"
        )
    steps = RunPlan.from_json(run.snapshot).workflow.steps
    gates = [step.id for step in steps if step.approval is not None]
    if step_id not in gates:
        known = ", ".join(gates) or "none"
        return NotFoundError(
            f"run {run.id} has no approval step {step_id!r} (approval steps: {known})"
        )
    return InvalidStateError(
        f"step {step_id!r} of run {run.id} is not waiting for approval yet "
        f"(run {run.status}); decide once the run reaches it"
    )


async def _refusal(approvals: ApprovalStore, row: ApprovalRecord) -> InvalidStateError:
    kind = f"tool call ({row.tool})" if row.is_tool_call else "step"
    what = f"the approval of {kind} {row.step_id!r} in run {row.run_id}"
    if row.status.decided:
        by = f" by {row.decided_by}" if row.decided_by else ""
        at = f" at {_iso(row.decided_at)}" if row.decided_at else ""
        return InvalidStateError(f"{what} was already {row.status}{by}{at}")
    if row.overdue(time.time()):
        await approvals.expire(row.run_id, row.step_id)
    return InvalidStateError(
        f"{what} expired at {_iso(row.expires_at)} without a decision "
        f"(on_timeout: {row.on_timeout}); it can no longer be decided"
    )


async def _wake(store: Store, row: ApprovalRecord) -> None:
    """Send the wake-up to the run's current workflow; failing here loses nothing."""
    from agentmill.engine.runtime import send_decision

    run = await store.get_run_any(row.run_id)
    try:
        await send_decision(
            run.workflow_id or run.id, topic_for(row.step_id), {"status": str(row.status)}
        )
    except Exception as exc:  # noqa: BLE001 - the row is recorded; the gate re-reads it anyway
        logger.warning(
            "run %s: could not wake the gate %s (%s); it reads the decision within %.0fs",
            row.run_id,
            row.step_id,
            exc,
            MAX_WAIT,
        )


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
