"""Plain records read from and written to agentmill's tables."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

__all__ = [
    "CallRecord",
    "CallStatus",
    "EventRecord",
    "RunRecord",
    "RunStatus",
    "StepRecord",
    "StepStatus",
    "trigger_source_of",
]

TRIGGER_SOURCE_CHARS = 20
"""The width of `am_runs.trigger_source`."""


def trigger_source_of(trigger: Any) -> str:
    """Where a run came from, as stored in `am_runs.trigger_source` and filtered on:
    the trigger's `source` (`api`, `github`, `mcp`, `retry`, ...), `cli` for a run with
    none (started from the command line)."""
    if isinstance(trigger, str):
        try:
            trigger = json.loads(trigger)
        except ValueError:
            return "cli"
    if isinstance(trigger, dict):
        source: Any = trigger.get("source")  # pyright: ignore[reportUnknownMemberType]
        if isinstance(source, str) and source:
            return source[:TRIGGER_SOURCE_CHARS]
    return "cli"


class RunStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"

    @property
    def finished(self) -> bool:
        return self in {RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED}


class StepStatus(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclass(frozen=True, kw_only=True)
class RunRecord:
    id: str
    tenant: str
    workflow: str
    status: RunStatus
    inputs: dict[str, Any]
    outputs: dict[str, Any] | None
    error: str | None
    snapshot: dict[str, Any]
    config_path: str | None
    usage: dict[str, int] | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    owner: str | None
    owner_pid: int | None
    owner_host: str | None
    heartbeat_at: float | None
    cancel_requested: bool
    workflow_id: str | None = None
    """The DBOS workflow currently executing this run (a new one per resume of a finished run)."""
    idempotency_key: str | None = None
    concurrency_key: str | None = None
    """Runs of a tenant sharing this key supersede or queue behind each other."""
    parent_run_id: str | None = None
    """The run this one was retried from (its earlier steps' outputs were reused)."""
    trigger: dict[str, Any] | None = None
    """Where the run came from: cli, api (key id) or a webhook delivery."""
    auto_resume: bool = False
    """Interrupted by a server shutdown: the next server worker continues it on its own."""
    served: bool = False
    """Executed by server workers (through the shared queue), which adopt it if its worker
    dies; runs of an embedded engine (the CLI) are resumed by their user instead."""
    budget: dict[str, Any] | None = None
    """The per-run budget given at start (`{"usd": …, "tokens": …}`), replacing the workflow's."""
    api_key_id: str | None = None
    """The API key that started the run (its daily and monthly budgets apply)."""

    @property
    def trigger_source(self) -> str:
        """`cli`, `api`, `github`, ... (`am_runs.trigger_source`, derived from `trigger`)."""
        return trigger_source_of(self.trigger)

    @property
    def step_ids(self) -> list[str]:
        """The step ids of the workflow snapshot the run executes, in workflow order."""
        workflow: dict[str, Any] = self.snapshot.get("workflow", {})
        return [str(step["id"]) for step in workflow.get("steps", [])]


@dataclass(frozen=True, kw_only=True)
class StepRecord:
    run_id: str
    key: str
    step_id: str
    item_index: int | None
    status: StepStatus
    attempt: int
    output: Any = None
    error: str | None = None
    usage: dict[str, int] | None = None
    model: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    cost_usd: float | None = None
    """None when the call was made but its price is unknown, or for steps without a call."""
    details: dict[str, Any] | None = None
    """What the policies did: `cached`, `fallback`, `guard` ..."""
    agent: str | None = None
    """The agent the step called; None for approval gates and skipped steps."""


class CallStatus(StrEnum):
    """Where one model request or tool call of a step stands."""

    RUNNING = "running"
    WAITING = "waiting"
    """A tool call waiting for a person's approval."""
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    """A tool call that ended in an error the model was shown (it is not run again)."""


@dataclass(frozen=True, kw_only=True)
class CallRecord:
    """One model request or tool call inside a step, as the durable agent loop recorded it.

    A finished call is replayed from this record when its step runs again (after a crash or
    a retry): the model is not asked again and the tool is not run again."""

    run_id: str
    step: str
    """The step's key (`step` or `step[index]`)."""
    call_id: str
    """`m<turn>` for the turn's model request, `t<turn>.<n>` for its n-th tool call."""
    kind: str
    """`model` or `tool`."""
    name: str
    """The model's label, or the tool's name."""
    status: CallStatus
    attempt: int
    """The step attempt that made the call."""
    arguments: Any = None
    result: Any = None
    """The model's response (pydantic-ai's JSON form), or the tool's result as JSON."""
    error: str | None = None
    usage: dict[str, int] | None = None
    cost_usd: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    details: dict[str, Any] | None = None


@dataclass(frozen=True, kw_only=True)
class EventRecord:
    """One entry of a run's ordered event log; `(step, attempt, seq)` identify it."""

    run_id: str
    seq: int
    kind: str
    step: str | None
    attempt: int
    data: dict[str, Any]
    ts: float

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "seq": self.seq,
            "kind": self.kind,
            "step": self.step,
            "attempt": self.attempt,
            "data": self.data,
            "ts": self.ts,
        }

    @functools.cached_property
    def json_text(self) -> str:
        """`to_json()` as compact JSON, encoded once however many streams send it."""
        return json.dumps(self.to_json(), separators=(",", ":"), ensure_ascii=False)
