"""Tool approvals: a tool call that needs a person waits at a gate of its own.

The durable loop (`agents/tools/recorded.py`) asks `GateToolApprovals.decide` before it
runs a call of a tool with `approve:`. The gate is an `am_approvals` row like a gate
step's, with the same wait (`engine/approvals.py`: the row is the source of truth, a DBOS
message only wakes the wait early, the deadline is fixed when the call is first reached),
keyed `<step key>#<call id>` (e.g. `review#t2.1`, `review[0]#t1.1`) and holding the tool,
the model's arguments and the text it wrote with the call.

The loop runs again from the start on every attempt (after a crash, a restart, a retry):
a call it reaches again asks again with the same ids. The row is created once, so the
answer is the decision already made, or the wait goes on at the same gate with its first
deadline: never a second gate, and each decision resumes exactly one call.

While it waits, the step's timeout stops (`agents/clock.py`), the call does not hold back a
graceful shutdown (`Drain.waiting`), and the run's log shows `approval_requested` /
`approval_decided` on the step, with the gate id, like a gate step's.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from agentmill.agents.clock import current_clock
from agentmill.agents.tools.recorded import ToolDecision
from agentmill.engine.approvals import TOOL_GATE_MARK, wait_for_decision
from agentmill.engine.events import current_step_events
from agentmill.logs import Redactor, strip_controls
from agentmill.spec.models import DEFAULT_APPROVAL_TIMEOUT
from agentmill.store.approvals import ApprovalRecord, ApprovalStatus, ApprovalStore

if TYPE_CHECKING:
    from agentmill.agents.tools.recorded import ToolApprovals
    from agentmill.engine.drain import Drain
    from agentmill.policy.chain import RunScope
    from agentmill.store import Store

__all__ = ["GateToolApprovals", "tool_approvals_factory", "tool_gate_id", "tool_prompt"]

PROMPT_ARGS_CHARS = 200
"""A tool gate's prompt shows the arguments up to this many characters."""

_REDACTOR = Redactor()


def tool_gate_id(step: str, call_id: str) -> str:
    """The gate of one tool call: `<step key>#<call id>`, e.g. `review#t2.1`."""
    return f"{step}{TOOL_GATE_MARK}{call_id}"


def tool_prompt(tool: str, arguments: dict[str, Any]) -> str:
    """What lists of approvals show for a tool gate: `Call <tool> with <args preview>`.
    The tool's name (from an MCP server) and the model's arguments are untrusted and shown
    on terminals: cleaned of escapes and control characters JSON leaves (C1, bidi)."""
    text = json.dumps(arguments, ensure_ascii=False, default=str)
    if len(text) > PROMPT_ARGS_CHARS:
        text = text[:PROMPT_ARGS_CHARS] + "…"
    prompt = f"Call {tool} with {_REDACTOR.redact(text)}"
    return strip_controls(prompt, keep_newlines=False)


def tool_approvals_factory(
    store: Store, *, drain: Drain | None = None, timeout: float = DEFAULT_APPROVAL_TIMEOUT
) -> Callable[[RunScope], ToolApprovals]:
    """`PolicyServices.tool_approvals`: the gates of each run's tool calls."""

    def for_run(scope: RunScope) -> ToolApprovals:
        return GateToolApprovals(store=store, tenant=scope.tenant, drain=drain, timeout=timeout)

    return for_run


@dataclass(frozen=True, kw_only=True)
class GateToolApprovals:
    """The engine's `ToolApprovals`: one approval gate per tool call of a run's steps."""

    store: Store
    tenant: str
    drain: Drain | None = None
    timeout: float = DEFAULT_APPROVAL_TIMEOUT
    """How long a call waits for a decision before it counts as rejected."""

    async def decide(
        self,
        *,
        run_id: str,
        step: str,
        call_id: str,
        tool: str,
        arguments: dict[str, Any],
        reason: str,
        on_wait: Callable[[], Awaitable[None]],
    ) -> ToolDecision:
        """The decision on the call: made already, or waited for at the call's one gate."""
        approvals = ApprovalStore(self.store.engine)
        row = await approvals.create(
            self._row(run_id, tool_gate_id(step, call_id), tool, arguments, reason)
        )
        if row.status is ApprovalStatus.PENDING:
            await on_wait()
            row = await self._wait(approvals, row)
        _announce_decided(row)
        return decision_of(row)

    def _row(
        self, run_id: str, gate: str, tool: str, arguments: dict[str, Any], reason: str
    ) -> ApprovalRecord:
        """The gate's row as first created (a call reached again keeps the stored one)."""
        now = time.time()
        return ApprovalRecord(
            run_id=run_id,
            step_id=gate,
            tenant=self.tenant,
            status=ApprovalStatus.PENDING,
            prompt=tool_prompt(tool, arguments),
            on_timeout="reject",
            created_at=now,
            expires_at=now + self.timeout,
            tool=tool,
            arguments=arguments,
            reason=reason or None,
        )

    async def _wait(self, approvals: ApprovalStore, row: ApprovalRecord) -> ApprovalRecord:
        """Wait with the step's clock stopped and the drain not waiting for this call."""
        _announce_requested(row)
        clock = current_clock()
        if clock is not None:
            clock.pause()
        try:
            async with self._waiting():
                return await wait_for_decision(approvals, row)
        finally:
            if clock is not None:
                clock.resume()

    @contextlib.asynccontextmanager
    async def _waiting(self) -> AsyncGenerator[None]:
        if self.drain is None:
            yield
            return
        async with self.drain.waiting():
            yield


def decision_of(row: ApprovalRecord) -> ToolDecision:
    """The loop's view of a decided (or expired) gate."""
    if row.status is ApprovalStatus.EXPIRED:
        return ToolDecision(
            approved=False,
            message=(
                f"nobody decided before the approval expired at {_iso(row.expires_at)}; "
                "the call was not made"
            ),
        )
    approved = row.status is ApprovalStatus.APPROVED
    return ToolDecision(
        approved=approved,
        arguments=row.edited_arguments if approved else None,
        message=row.comment or "",
        decided_by=row.decided_by,
    )


def _announce_requested(row: ApprovalRecord) -> None:
    """`approval_requested` on the step, as a gate step emits it, naming the gate and call."""
    events = current_step_events()
    if events is None:
        return
    events.emit(
        "approval_requested",
        gate=row.step_id,
        tool=row.tool,
        prompt=row.prompt,
        reason=_REDACTOR.redact(row.reason or ""),
        expires_at=row.expires_at,
        on_timeout=row.on_timeout,
    )


def _announce_decided(row: ApprovalRecord) -> None:
    events = current_step_events()
    if events is None:
        return
    events.emit(
        "approval_decided",
        gate=row.step_id,
        tool=row.tool,
        approved=row.status is ApprovalStatus.APPROVED,
        comment=row.comment,
        by=row.decided_by,
        status=str(row.status),
        edited=row.edited_arguments is not None,
    )


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
