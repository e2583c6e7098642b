"""What the run page shows, read from the store as of one event sequence number.

The page is rendered as of `last_seq` N and its script streams the events after N, so what
it shows must not miss an event up to N nor count one after it twice. N is read first;
records read after it are at least as new (their later events only set the same states
again, and run.js drops output text of a step it already shows finished); the text running
steps streamed so far is rebuilt from their `step_output` events up to N.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from markupsafe import Markup

from agentmill.spec.models import StepSpec, WorkflowSpec
from agentmill.store import EventRecord, RunRecord
from agentmill.store.approvals import ApprovalRecord
from agentmill.store.call_summary import CallSummary, summarize_call
from agentmill.store.costs import run_cost
from agentmill.store.records import CallRecord, StepRecord, StepStatus, trigger_source_of
from agentmill.store.store import Store
from agentmill.web.dag import dag_node_id, foreach_counts, layout_dag, render_dag, step_states

__all__ = ["DiffLine", "RunView", "StepPanel", "as_text", "diff_lines", "panel_id", "read_run"]

ACTIVE = ("pending", "running")
RESUMABLE = ("interrupted", "failed", "cancelled")


@dataclass(frozen=True, kw_only=True)
class DiffLine:
    kind: str
    """`add`, `del`, `hunk`, `file` or `ctx` (a CSS class `diff-<kind>`)."""
    text: str


@dataclass(kw_only=True)
class StepPanel:
    key: str
    step_id: str
    state: str
    agent: str | None = None
    model: str | None = None
    attempt: int = 0
    started_at: float | None = None
    duration: float | None = None
    tokens: str = ""
    cost: float | None = None
    error: str | None = None
    output: str = ""
    calls: list[CallSummary] = field(default_factory=list[CallSummary])
    diff: list[DiffLine] = field(default_factory=list[DiffLine])
    diff_stat: str = ""
    gates: list[ApprovalRecord] = field(default_factory=list[ApprovalRecord])

    @property
    def dom_id(self) -> str:
        return panel_id(self.key)


@dataclass(kw_only=True)
class RunView:
    run: RunRecord
    last_seq: int
    trigger: str
    cost: str
    tokens: str
    duration: float | None
    dag: Markup
    steps: list[str]
    """The workflow's step ids (to retry from)."""
    panels: list[StepPanel]
    gates: list[ApprovalRecord]

    @property
    def active(self) -> bool:
        return str(self.run.status) in ACTIVE

    @property
    def resumable(self) -> bool:
        return str(self.run.status) in RESUMABLE


def panel_id(key: str) -> str:
    """The DOM id of a step key's panel (`step-` + the DAG's escaping of the key)."""
    return "step-" + dag_node_id(key).removeprefix("dag-")


def as_text(value: Any) -> str:
    """A step output or an input as text: strings as they are, anything else as JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def tokens_of(usage: dict[str, Any] | None) -> str:
    if not usage:
        return ""
    tokens_in, tokens_out = usage.get("input_tokens", 0), usage.get("output_tokens", 0)
    return f"{tokens_in} in / {tokens_out} out"


def diff_lines(patch: str) -> list[DiffLine]:
    lines: list[DiffLine] = []
    for line in patch.splitlines():
        if line.startswith(("+++", "---", "diff --git", "index ")):
            kind = "file"
        elif line.startswith("@@"):
            kind = "hunk"
        elif line.startswith("+"):
            kind = "add"
        elif line.startswith("-"):
            kind = "del"
        else:
            kind = "ctx"
        lines.append(DiffLine(kind=kind, text=line))
    return lines


async def read_run(
    store: Store, run_id: str, *, tenant: str, gates: Callable[[], Awaitable[list[ApprovalRecord]]]
) -> RunView:
    """The run page's content as of the run's last event (another tenant's run: 404);
    `gates` reads its pending approvals (after that event, like the steps)."""
    await store.journal.commit()  # events (and run updates) of runs here may be queued
    run = await store.get_run(run_id, tenant=tenant)
    last_seq = await store.last_seq(run_id)
    records, calls, pending = await asyncio.gather(
        store.steps(run_id), store.calls(run_id), gates()
    )
    running = [r.key for r in records if r.status is StepStatus.RUNNING]
    streamed = await _streamed_text(store, run_id, last_seq, running) if running else {}
    workflow = WorkflowSpec.model_validate(run.snapshot["workflow"])
    panels = _panels(workflow.steps, records, calls, pending, streamed)
    waiting = {gate.step_id.split("#")[0].split("[")[0] for gate in pending if gate.tool}
    states = step_states(workflow.steps, records, run_status=str(run.status), waiting=waiting)
    layout = layout_dag(workflow.steps)
    began = run.started_at or run.created_at
    return RunView(
        run=run,
        last_seq=last_seq,
        trigger=trigger_source_of(run.trigger),
        cost=run_cost(run, records).describe(),
        tokens=tokens_of(run.usage),
        duration=(run.finished_at - began) if run.finished_at is not None else None,
        dag=render_dag(layout, states, label=run.workflow, items=foreach_counts(records)),
        steps=[step.id for step in workflow.steps],
        panels=panels,
        gates=pending,
    )


async def _streamed_text(
    store: Store, run_id: str, last_seq: int, keys: list[str]
) -> dict[str, tuple[int, str]]:
    """Per running step key, its latest attempt and the text it streamed up to `last_seq`
    (only those steps' text events are read, not every event of the run)."""
    found = await store.events(
        run_id, through=last_seq, kinds=("step_started", "step_output"), steps=keys
    )
    return streamed_text(found)


def streamed_text(events: Iterable[EventRecord]) -> dict[str, tuple[int, str]]:
    attempts: dict[str, int] = {}
    chunks: defaultdict[str, list[str]] = defaultdict(list)
    for event in events:
        if event.step is None or event.kind not in ("step_started", "step_output"):
            continue
        if event.attempt > attempts.get(event.step, 0):
            attempts[event.step] = event.attempt
            chunks[event.step] = []
        if event.kind == "step_output" and event.attempt == attempts[event.step]:
            chunks[event.step].append(str(event.data.get("text", "")))
    return {key: (attempts[key], "".join(parts)) for key, parts in chunks.items()}


def _panels(
    steps: Sequence[StepSpec],
    records: Sequence[StepRecord],
    calls: Sequence[CallRecord],
    gates: Sequence[ApprovalRecord],
    streamed: dict[str, tuple[int, str]],
) -> list[StepPanel]:
    by_step: defaultdict[str, list[StepRecord]] = defaultdict(list)
    for record in records:
        by_step[record.step_id].append(record)
    panels: list[StepPanel] = []
    for step in steps:
        found = sorted(by_step.get(step.id, []), key=lambda r: (r.item_index or 0, r.key))
        if not found:
            panels.append(StepPanel(key=step.id, step_id=step.id, state="pending",
                                    agent=step.agent))  # fmt: skip
        panels += [_panel(record, streamed.get(record.key)) for record in found]
    by_key = {panel.key: panel for panel in panels}
    for call in calls:
        if call.step in by_key:
            by_key[call.step].calls.append(summarize_call(call))
    for gate in gates:
        key = gate.step_id.split("#")[0]
        if key in by_key:
            by_key[key].gates.append(gate)
            by_key[key].state = "waiting" if by_key[key].state == "running" else by_key[key].state
    return panels


def _panel(record: StepRecord, streamed: tuple[int, str] | None) -> StepPanel:
    """A step's panel; a running step shows what its attempt streamed up to the page's
    sequence number (nothing when that attempt started after it: its events follow)."""
    running = record.status is StepStatus.RUNNING
    so_far = streamed[1] if streamed is not None and streamed[0] == record.attempt else ""
    ended, began = record.finished_at, record.started_at
    panel = StepPanel(
        key=record.key,
        step_id=record.step_id,
        state=str(record.status),
        agent=record.agent,
        model=record.model,
        attempt=record.attempt,
        started_at=began,
        duration=(ended - began) if ended is not None and began is not None else None,
        tokens=tokens_of(record.usage),
        cost=record.cost_usd,
        error=record.error,
        output=so_far if running else as_text(record.output),
    )
    diff = (record.details or {}).get("diff")
    if isinstance(diff, dict):
        panel.diff = diff_lines(str(diff.get("patch") or ""))  # pyright: ignore[reportUnknownArgumentType]
        panel.diff_stat = str(diff.get("stat") or "")  # pyright: ignore[reportUnknownArgumentType]
    return panel
