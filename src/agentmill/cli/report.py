"""Printing a finished run: outputs for people, a stable JSON document for programs."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.rule import Rule
from rich.text import Text

from agentmill.store import CostSummary, RunRecord, RunStatus, StepRecord, run_cost

__all__ = ["print_outputs", "run_to_json", "step_to_json"]


def run_to_json(run: RunRecord, steps: list[StepRecord]) -> dict[str, Any]:
    """The `--json` result: stable keys, documented in docs/cli.md."""
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
        "steps": [step_to_json(step) for step in steps],
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
    out: Console, err: Console, run: RunRecord, cost: CostSummary | None = None
) -> None:
    """Outputs on stdout; status, usage, cost and run id on stderr."""
    for name, value in (run.outputs or {}).items():
        out.print(Rule(escape(name), align="left"))
        out.print(Text(value if isinstance(value, str) else _json(value)))
    usage = run.usage or {}
    tokens = f"{usage.get('input_tokens', 0)} in / {usage.get('output_tokens', 0)} out tokens"
    if cost is not None and cost.calls:
        tokens += f", {cost.describe()}"
    if run.status is RunStatus.SUCCEEDED:
        err.print(f"[green]✔ run {run.id} succeeded[/] ({tokens})")
    else:
        err.print(f"[bold red]✘ run {run.id} {run.status}[/]: {escape(run.error or '')}")
        err.print(f"  retry the failed steps with: agentmill runs resume {run.id}")


def _json(value: Any) -> str:
    import json

    return json.dumps(value, indent=2, ensure_ascii=False)
