"""What `runs show` and the API tell about a step's model requests and tool calls.

A `CallRecord` holds everything the durable loop needs to replay a call, including the
tool's whole result and its arguments as the model wrote them. People looking at a run need
less, and must not see secrets: a summary keeps the arguments as a redacted preview (the
same text as the `step_tool_call` event), the result as its size, the error redacted. The CLI
builds summaries from the store in local mode and reads the same JSON from the API in remote
mode, so both print the same lines.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from agentmill.logs import Redactor
from agentmill.store.records import CallRecord, CallStatus

__all__ = ["ARGS_PREVIEW_CHARS", "CallSummary", "summarize_call"]

ARGS_PREVIEW_CHARS = 2000
"""Arguments are shown up to this many characters (as in the `step_tool_call` event)."""

_REDACTOR = Redactor()


@dataclass(frozen=True, kw_only=True)
class CallSummary:
    """One model request or tool call of a step, as shown to people."""

    step: str
    """The step's key (`step` or `step[index]`)."""
    call_id: str
    """`m<turn>` for a model request, `t<turn>.<n>` for the n-th tool call of that turn."""
    kind: str
    """`model` or `tool`."""
    name: str
    """The model that answered, or the tool's name as the model saw it."""
    status: str
    """running, waiting (for an approval), succeeded or failed."""
    attempt: int
    args: str | None = None
    """A tool call's arguments as JSON, redacted, cut at `ARGS_PREVIEW_CHARS`."""
    error: str | None = None
    """What the model was told instead of a result (redacted)."""
    size: int | None = None
    """Characters of a successful tool call's result (as JSON)."""
    usage: dict[str, Any] | None = None
    cost_usd: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    duration: float | None = None
    """Seconds from start to finish; None while it runs."""
    details: dict[str, Any] | None = None
    """A model request's policy details (cached, fallback); `refused` / `stopped` for a tool
    call a guard or an approver did not let run."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> CallSummary:
        """A summary from `to_json()` (or the API's CallOut), unknown keys ignored."""
        known = {name: body[name] for name in cls.__dataclass_fields__ if name in body}
        return cls(**known)


def summarize_call(record: CallRecord) -> CallSummary:
    """The summary of one recorded call: arguments previewed, result measured."""
    duration = None
    if record.started_at is not None and record.finished_at is not None:
        duration = round(record.finished_at - record.started_at, 4)
    is_tool = record.kind == "tool"
    return CallSummary(
        step=record.step,
        call_id=record.call_id,
        kind=record.kind,
        name=record.name,
        status=str(record.status),
        attempt=record.attempt,
        args=_preview(record.arguments) if is_tool else None,
        error=_REDACTOR.redact(record.error) if record.error is not None else None,
        size=_size(record) if is_tool else None,
        usage=record.usage,
        cost_usd=record.cost_usd,
        started_at=record.started_at,
        finished_at=record.finished_at,
        duration=duration,
        details=record.details,
    )


def _size(record: CallRecord) -> int | None:
    if record.status is not CallStatus.SUCCEEDED:
        return None
    return len(json.dumps(record.result, default=str))


def _preview(arguments: Any) -> str:
    if arguments is None:
        return ""
    text = arguments if isinstance(arguments, str) else json.dumps(arguments, default=str)
    if len(text) > ARGS_PREVIEW_CHARS:
        text = text[:ARGS_PREVIEW_CHARS] + "…"
    return _REDACTOR.redact(text)
