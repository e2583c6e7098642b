"""Printing a finished run: outputs for people, a stable JSON document for programs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.rule import Rule
from rich.text import Text

from agentmill.store import CostSummary, RunRecord, RunStatus, StepRecord, run_cost
from agentmill.store.call_summary import CallSummary

__all__ = [
    "closing_line",
    "print_outputs",
    "run_to_json",
    "status_label",
    "step_to_json",
    "token_count",
]


def run_to_json(
    run: RunRecord, steps: list[StepRecord], calls: list[CallSummary]
) -> dict[str, Any]:
    """The `--json` result: stable keys, documented in docs/cli.md. Each step lists the
    model requests and tool calls it made (`calls`, empty for steps without tools)."""
    by_step: dict[str, list[dict[str, Any]]] = {}
    for call in calls:
        by_step.setdefault(call.step, []).append(call.to_json())
    return {
        "run_id": run.id,
        "workflow": run.workflow,
        "status": str(run.status),
        "inputs": run.inputs,
        "outputs": run.outputs or {},
        "error": run.error,
        "usage": run.usage or {},
        "created_at": run.created_at,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "cost": run_cost(run, steps).to_json(),
        "steps": [step_to_json(step) | {"calls": by_step.get(step.key, [])} for step in steps],
    }


def step_to_json(step: StepRecord) -> dict[str, Any]:
    elapsed = None
    if step.started_at is not None and step.finished_at is not None:
        elapsed = round(step.finished_at - step.started_at, 4)
    return {
        "key": step.key,
        "step": step.step_id,
        "index": step.item_index,
        "status": str(step.status),
        "attempt": step.attempt,
        "model": step.model,
        "usage": step.usage or {},
        "elapsed": elapsed,
        "error": step.error,
        "output": step.output,
        "cost_usd": step.cost_usd,
        "details": step.details or {},
    }


def print_outputs(
    out: Console,
    err: Console,
    run: RunRecord,
    cost: CostSummary | None = None,
    *,
    process_gone: bool = False,
) -> None:
    """Outputs on stdout; the closing line (status, usage, cost, what next) on stderr."""
    for name, value in (run.outputs or {}).items():
        out.print(Rule(escape(name), align="left"))
        out.print(Text(value if isinstance(value, str) else _json(value)))
    err.print(closing_line(run, cost, process_gone=process_gone), soft_wrap=True)


def closing_line(
    run: RunRecord, cost: CostSummary | None = None, *, process_gone: bool = False
) -> str:
    """The last words about a run (Rich markup), wherever they are printed: its status
    and the command to go on, on a line of its own so that it can be copied.

    `process_gone` marks a pending or running run whose executing process has died
    (locally: its heartbeat stopped): it can only be resumed.
    """
    rid = run.id
    status = run.status
    if status is RunStatus.SUCCEEDED:
        return f"[green]✔ run {rid} succeeded[/] ({_usage(run, cost)})"
    if status is RunStatus.FAILED:
        return (
            f"[bold red]✘ run {rid} failed[/]: {escape(run.error or 'no error recorded')}\n"
            f"  retry the failed steps with: agentmill runs resume {rid}"
        )
    in_flight = status in _IN_FLIGHT
    if status is RunStatus.INTERRUPTED or (in_flight and process_gone):
        why = f"{status}, its process is gone" if in_flight else str(status)
        return f"[yellow]⏸ run {rid} {why}[/]\n  continue it with: agentmill runs resume {rid}"
    if status is RunStatus.CANCELLED:
        return f"[yellow]■ run {rid} cancelled[/]\n  resume it with: agentmill runs resume {rid}"
    waiting = " (waiting to start)" if status is RunStatus.PENDING else ""
    return (
        f"[cyan]… run {rid} {status}{waiting}[/]\n"
        f"  follow it with: agentmill runs logs --follow {rid}\n"
        f"  stop it with: agentmill runs cancel {rid}"
    )


def status_label(run: RunRecord, *, process_gone: bool = False) -> str:
    """A run's status in tables; flags a run whose process is gone (the closing line says
    what to do: a command in a table cell would be wrapped)."""
    if process_gone and run.status in _IN_FLIGHT:
        return f"{run.status} (process gone)"
    return str(run.status)


_IN_FLIGHT = frozenset({RunStatus.PENDING, RunStatus.RUNNING})


def _usage(run: RunRecord, cost: CostSummary | None) -> str:
    usage = run.usage or {}
    tokens_in, tokens_out = token_count(usage, "input_tokens"), token_count(usage, "output_tokens")
    tokens = f"{tokens_in} in / {tokens_out} out tokens"
    if _estimated(usage):
        tokens += ", estimated as the provider reported none"
    if cost is not None and cost.calls:
        tokens += f", {cost.describe()}"
    return tokens


def token_count(usage: Mapping[str, Any], *keys: str) -> str:
    """The sum of `keys` of a usage record, `~12` when it is an estimate (the provider
    reported no usage)."""
    total = sum(int(usage.get(key) or 0) for key in keys)
    return f"~{total}" if _estimated(usage) else str(total)


def _estimated(usage: Mapping[str, Any]) -> bool:
    return usage.get("estimated") is True


def _json(value: Any) -> str:
    import json

    return json.dumps(value, indent=2, ensure_ascii=False)
