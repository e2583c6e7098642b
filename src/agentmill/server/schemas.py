"""The JSON documents of the runs and workflows API, built from store records and specs.

Routes return these models; other routes (events, approvals, webhooks) reuse `RunOut` and
the path parameter types, so a run looks the same wherever it appears.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from fastapi import Path
from pydantic import BaseModel, ConfigDict, Field

from agentmill.errors import ConfigProblem
from agentmill.spec.models import BudgetSpec, InputSpec, InputType, WorkflowSpec
from agentmill.store import (
    CallStatus,
    CostSummary,
    RunRecord,
    RunStatus,
    SeriesPoint,
    StepRecord,
    StepStatus,
    run_cost,
)
from agentmill.store.call_summary import CallSummary

__all__ = [
    "ID_PATTERN",
    "NAME_PATTERN",
    "CallList",
    "CallOut",
    "ConfigProblemOut",
    "CostOut",
    "CostSeries",
    "CostTotals",
    "InputOut",
    "RetryRequest",
    "RunDetail",
    "RunId",
    "RunList",
    "RunOut",
    "RunStart",
    "SeriesPointOut",
    "StepId",
    "StepOut",
    "ValidateRequest",
    "ValidateResult",
    "WorkflowList",
    "WorkflowName",
    "WorkflowOut",
]

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
"""Run ids (and the like) in paths: what the engine generates, nothing a database chokes on."""

NAME_PATTERN = r"^[^\x00-\x1f\x7f]+$"
"""Workflow and step names from a config file: anything printable."""

RunId = Annotated[str, Path(max_length=64, pattern=ID_PATTERN, description="A run id")]
StepId = Annotated[
    str, Path(max_length=200, pattern=NAME_PATTERN, description="A step id of the run's workflow")
]
WorkflowName = Annotated[
    str, Path(max_length=200, pattern=NAME_PATTERN, description="A workflow of the config")
]

Usage = Mapping[str, int | float | bool]
"""Token counts; `estimated: true` when the provider reported none (see docs/budgets.md)."""


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RunOut(_Out):
    """A run: what was asked, where it stands, what it produced."""

    id: str
    tenant: str
    workflow: str
    status: RunStatus
    inputs: dict[str, Any]
    outputs: dict[str, Any] | None = Field(description="The workflow's outputs once it succeeded")
    error: str | None
    usage: Usage | None = Field(description="Tokens and requests summed over the run's calls")
    created_at: float = Field(description="Epoch seconds")
    started_at: float | None
    finished_at: float | None
    parent_run_id: str | None = Field(description="The run this one was retried from")
    trigger: dict[str, Any] | None = Field(
        description='Where the run came from, e.g. {"source": "api", "key": "<key id>"}'
    )

    @classmethod
    def from_record(cls, run: RunRecord) -> RunOut:
        return cls(**_run_fields(run))


def _run_fields(run: RunRecord) -> dict[str, Any]:
    return {
        "id": run.id,
        "tenant": run.tenant,
        "workflow": run.workflow,
        "status": run.status,
        "inputs": run.inputs,
        "outputs": run.outputs,
        "error": run.error,
        "usage": run.usage,
        "created_at": run.created_at,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "parent_run_id": run.parent_run_id,
        "trigger": run.trigger,
    }


class StepOut(_Out):
    """One call of a step (a `foreach` step has one per item, `index` numbering them)."""

    key: str = Field(description="`step`, or `step[index]` for a foreach item")
    step_id: str
    index: int | None
    status: StepStatus
    attempt: int
    output: Any
    error: str | None
    usage: Usage | None
    model: str | None
    started_at: float | None
    finished_at: float | None
    cost_usd: float | None = Field(
        default=None, description="What the call cost; null when its price is unknown"
    )
    details: dict[str, Any] | None = Field(
        default=None, description="What the policies did: cached, fallback, guard, ..."
    )
    agent: str | None = Field(
        default=None, description="The agent the step called; null for gates and skips"
    )

    @classmethod
    def from_record(cls, step: StepRecord) -> StepOut:
        return cls(
            key=step.key,
            step_id=step.step_id,
            index=step.item_index,
            status=step.status,
            attempt=step.attempt,
            output=step.output,
            error=step.error,
            usage=step.usage,
            model=step.model,
            started_at=step.started_at,
            finished_at=step.finished_at,
            cost_usd=step.cost_usd,
            details=step.details,
            agent=step.agent,
        )


class CallOut(_Out):
    """One model request or tool call of a step, as the durable agent loop recorded it.

    Arguments are a redacted preview and the result only its size: a tool's whole result
    stays in the run's database (it may be large, and hold what the tool read)."""

    step: str = Field(description="The step's key: `step`, or `step[index]` for a foreach item")
    call_id: str = Field(
        description="`m<turn>` for the turn's model request, `t<turn>.<n>` for its tool calls"
    )
    kind: Literal["model", "tool"]
    name: str = Field(description="The model that answered, or the tool's name")
    status: CallStatus = Field(
        description="`waiting`: a tool call waiting for approval; `failed`: the model was "
        "shown an error instead of a result"
    )
    attempt: int = Field(description="The step attempt that made the call")
    args: str | None = Field(
        description="A tool call's arguments as JSON, secrets redacted, cut at 2,000 characters"
    )
    error: str | None = Field(description="What the model was told instead of a result")
    size: int | None = Field(description="Characters of a successful tool call's result")
    usage: Usage | None = Field(description="Tokens of a model request (or of an agent tool)")
    cost_usd: float | None = Field(description="What it cost; null when unknown or free")
    started_at: float | None
    finished_at: float | None
    duration: float | None = Field(description="Seconds; null while the call runs")
    details: dict[str, Any] | None = Field(
        description="Policy details of a model request (cached, fallback); `refused` or "
        "`stopped` for a tool call a guard or an approver did not let run"
    )

    @classmethod
    def from_summary(cls, summary: CallSummary) -> CallOut:
        return cls.model_validate(summary.to_json())


class CallList(_Out):
    """A run's calls in the order they started."""

    items: list[CallOut]


class CostOut(_Out):
    """Known spend, and how many calls had no known price (never counted as zero)."""

    usd: float = Field(description="Sum of the calls whose price is known, in US dollars")
    calls: int = Field(description="Model calls made (cache hits included, at no cost)")
    unpriced_calls: int = Field(description="Calls of models whose price is unknown")
    estimated_calls: int = Field(
        default=0,
        description="Calls priced from estimated token usage (their provider reported none)",
    )
    complete: bool = Field(description="Whether `usd` covers every call")
    group: str | None = Field(
        default=None, description="The workflow, tenant, agent or model of a total"
    )

    @classmethod
    def from_summary(cls, summary: CostSummary) -> CostOut:
        return cls.model_validate(summary.to_json())


class CostTotals(_Out):
    """Spend per workflow, agent, model or tenant over a time window."""

    group_by: str
    since: float | None
    until: float | None
    items: list[CostOut]


class SeriesPointOut(_Out):
    """What one group's calls finished in one bucket cost."""

    bucket_start: float = Field(description="Epoch seconds of the bucket's start (UTC)")
    group: str
    usd: float = Field(description="Sum of the calls whose price is known, in US dollars")
    calls: int
    unpriced_calls: int = Field(description="Calls of models whose price is unknown")
    estimated_calls: int = Field(description="Calls priced from estimated token usage")

    @classmethod
    def from_point(cls, point: SeriesPoint) -> SeriesPointOut:
        return cls.model_validate(point.to_json())


class CostSeries(_Out):
    """Spend per hour or day and group; buckets without calls are left out."""

    group_by: str
    bucket: str
    since: float
    until: float
    items: list[SeriesPointOut] = Field(description="Oldest bucket first, then by group")


class RunDetail(RunOut):
    """A run with its plan, its recorded step calls and the number of its last event."""

    plan: list[str] = Field(description="The workflow's step ids, in workflow order")
    steps: list[StepOut]
    last_seq: int = Field(description="Follow the events after this one to see what comes next")
    cost: CostOut = Field(description="What the run's own calls cost")

    @classmethod
    def from_records(cls, run: RunRecord, steps: list[StepRecord], last_seq: int) -> RunDetail:
        return cls(
            **_run_fields(run),
            plan=run.step_ids,
            steps=[StepOut.from_record(step) for step in steps],
            last_seq=last_seq,
            cost=CostOut.from_summary(run_cost(run, steps)),
        )


class RunList(_Out):
    items: list[RunOut]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null on the last page"
    )


class RunStart(_In):
    """Start a run of a workflow of the server's config."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={"examples": [{"workflow": "review", "inputs": {"diff": "..."}}]},
    )

    workflow: str = Field(max_length=200)
    inputs: dict[str, Any] = Field(
        default_factory=dict, description="Values of the workflow's declared inputs"
    )
    budget: BudgetSpec | None = Field(
        default=None,
        description="Limit for this run (`usd`, `tokens` or both), replacing the workflow's "
        "per-run budget; the tenant's and the API key's budgets still apply",
    )


class RetryRequest(_In):
    """Re-run a finished run from one step: earlier steps reuse their recorded outputs."""

    from_step: str = Field(max_length=200, description="The first step to run again")


class InputOut(_Out):
    type: InputType
    required: bool
    default: Any
    description: str

    @classmethod
    def from_spec(cls, spec: InputSpec) -> InputOut:
        return cls(
            type=spec.type,
            required=spec.required,
            default=spec.default,
            description=spec.description,
        )


class WorkflowOut(_Out):
    """A workflow of the server's config: what it takes and the steps it runs."""

    name: str
    description: str
    inputs: dict[str, InputOut]
    steps: list[str] = Field(description="Step ids in workflow order")

    @classmethod
    def from_spec(cls, name: str, spec: WorkflowSpec) -> WorkflowOut:
        return cls(
            name=name,
            description=spec.description,
            inputs={key: InputOut.from_spec(value) for key, value in spec.inputs.items()},
            steps=[step.id for step in spec.steps],
        )


class WorkflowList(_Out):
    items: list[WorkflowOut]


class ValidateRequest(_In):
    config: str = Field(description="The text of a config file (YAML)")


class ConfigProblemOut(_Out):
    line: int | None = Field(description="1-based line in the posted text, when known")
    message: str
    hint: str | None

    @classmethod
    def from_problem(cls, problem: ConfigProblem) -> ConfigProblemOut:
        return cls(line=problem.line, message=problem.message, hint=problem.hint)


class ValidateResult(_Out):
    valid: bool
    problems: list[ConfigProblemOut]
