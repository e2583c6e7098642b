"""`agentmill runs list | show | logs | resume | cancel`."""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import typer

from agentmill.cli.exits import EXIT_OK, err, out, run_command

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    from agentmill.cli.client import RunsClient
    from agentmill.store import RunRecord, RunStatus, StepRecord
    from agentmill.store.call_summary import CallSummary

__all__ = ["app"]

app = typer.Typer(help="Inspect and control runs.", no_args_is_help=True, rich_markup_mode=None)

RunId = Annotated[str, typer.Argument(help="Run id (see `agentmill runs list`)")]


@app.command("list")
def list_runs(
    status: Annotated[str | None, typer.Option(help="Only runs with this status")] = None,
    workflow: Annotated[str | None, typer.Option(help="Only runs of this workflow")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 20,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List recent runs, newest first."""
    run_command(lambda: _list(status, workflow, limit, as_json))


@app.command()
def show(run_id: RunId, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Show a run: status, steps with usage (each step's model requests and tool calls
    under it), outputs."""
    run_command(lambda: _show(run_id, as_json))


@app.command()
def logs(
    run_id: RunId,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep streaming")] = False,
) -> None:
    """Print a run's event log (with --follow, until the run ends)."""
    run_command(lambda: _logs(run_id, follow))


@app.command()
def resume(run_id: RunId, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Continue an interrupted or failed run without re-running finished steps."""
    run_command(lambda: _resume(run_id, as_json))


@app.command()
def cancel(run_id: RunId) -> None:
    """Cancel a run; it stops at its next step boundary."""
    run_command(lambda: _cancel(run_id))


async def _list(status: str | None, workflow: str | None, limit: int, as_json: bool) -> int:
    from rich.markup import escape
    from rich.table import Table

    from agentmill.cli.report import status_label, token_count

    wanted = _parse_status(status) if status else None
    async with _client() as client:
        runs = await client.list_runs(status=wanted, workflow=workflow, limit=limit)
        gone = [client.process_gone(run) for run in runs]
    if as_json:
        out().print_json(json.dumps([_run_summary(r) for r in runs]))
        return EXIT_OK
    table = Table("id", "workflow", "status", "created", "tokens", box=None)
    for run, run_gone in zip(runs, gone, strict=True):
        label = status_label(run, process_gone=run_gone)
        tokens = token_count(run.usage or {}, "input_tokens", "output_tokens")
        table.add_row(run.id, escape(run.workflow), label, _when(run.created_at), tokens)
    out().print(table if runs else "no runs yet: start one with `agentmill run FILE WORKFLOW`")
    if any(gone):
        out().print("continue a run whose process is gone with: agentmill runs resume RUN_ID")
    return EXIT_OK


async def _show(run_id: str, as_json: bool) -> int:
    from rich.markup import escape
    from rich.table import Table

    from agentmill.cli.report import print_outputs, run_to_json, status_label, token_count
    from agentmill.store import run_cost

    async with _client() as client:
        run = await client.get_run(run_id)
        steps = await client.steps(run_id)
        found = await client.calls(run_id)
        gone = client.process_gone(run)
    if as_json:
        out().print_json(json.dumps(run_to_json(run, steps, found)))
        return EXIT_OK
    calls = _by_step(found)
    label = escape(status_label(run, process_gone=gone))
    out().print(f"run [bold]{run.id}[/]  workflow {escape(run.workflow)}  status {label}")
    table = Table(
        "step", "status", "attempt", "model", "tokens in/out", "cost", "elapsed", box=None
    )
    for step in steps:
        usage = step.usage or {}
        elapsed = ""
        if step.started_at and step.finished_at:
            elapsed = f"{step.finished_at - step.started_at:.2f}s"
        table.add_row(
            escape(step.key),
            str(step.status),
            str(step.attempt),
            escape(_model_column(step)),
            f"{token_count(usage, 'input_tokens')}/{token_count(usage, 'output_tokens')}",
            _cost_column(step),
            elapsed,
        )
        for call in calls.get(step.key, []):
            table.add_row(*_call_row(call))
    out().print(table)
    print_outputs(out(), err(), run, run_cost(run, steps), process_gone=gone)
    return EXIT_OK


async def _logs(run_id: str, follow: bool) -> int:
    from agentmill.cli.report import closing_line

    async with _client() as client:
        if follow:
            await client.get_run(run_id)
            async for event in client.follow(run_id):
                out().print_json(json.dumps(event.to_json()), indent=None)
        else:
            for event in await client.events(run_id):
                out().print_json(json.dumps(event.to_json()), indent=None)
        run = await client.get_run(run_id)
        gone = client.process_gone(run)
    err().print(closing_line(run, process_gone=gone), soft_wrap=True)
    return EXIT_OK


async def _resume(run_id: str, as_json: bool) -> int:
    from rich.markup import escape

    from agentmill.cli.run_cmd import follow_run

    async with _client(workers=True) as client:
        after = await client.last_seq(run_id)
        run = await client.resume(run_id)
        if not as_json:
            err().print(f"run [bold]{run.id}[/] resumed ({escape(run.workflow)})")
        return await follow_run(client, run, as_json=as_json, after=after)


async def _cancel(run_id: str) -> int:
    from agentmill.cli.report import closing_line

    async with _client() as client:
        run = await client.cancel(run_id)
    if run.status.finished:
        err().print(closing_line(run), soft_wrap=True)
    else:
        err().print(f"run {run.id}: cancel requested; it stops at its next step boundary")
    return EXIT_OK


def _client(*, workers: bool = False) -> AbstractAsyncContextManager[RunsClient]:
    """The client of these commands: only `resume` executes runs in this process."""
    from agentmill.cli.client import open_client
    from agentmill.settings import Settings

    return open_client(Settings(), workers=workers)


def _model_column(step: StepRecord) -> str:
    """The model that answered, with what the policies did (cache hit, fallback)."""
    details = step.details or {}
    notes: list[str] = []
    if details.get("cached"):
        notes.append("cached")
    if fallback := details.get("fallback"):
        notes.append(f"fallback after {len(fallback)}")
    text = step.model or ""
    return f"{text} ({', '.join(notes)})" if notes else text


def _by_step(calls: list[CallSummary]) -> dict[str, list[CallSummary]]:
    by_step: dict[str, list[CallSummary]] = {}
    for call in calls:
        by_step.setdefault(call.step, []).append(call)
    return by_step


def _call_row(call: CallSummary) -> tuple[str, ...]:
    """A step's model request or tool call, as a row under the step's own (indented)."""
    from rich.markup import escape

    from agentmill.cli.report import token_count

    usage = call.usage or {}
    tokens = ""
    if call.usage is not None:
        tokens = f"{token_count(usage, 'input_tokens')}/{token_count(usage, 'output_tokens')}"
    cost = ""
    if call.cost_usd is not None:
        cost = f"{'~' if usage.get('estimated') else ''}${call.cost_usd:.4f}"
    elif call.kind == "model" and call.status == "succeeded":
        cost = "unknown"
    duration = f"{call.duration:.2f}s" if call.duration is not None else ""
    return (
        f"  {escape(call.call_id)}",
        call.status,
        "",
        escape(_call_column(call)),
        tokens,
        cost,
        duration,
    )


def _call_column(call: CallSummary) -> str:
    """`model` for a request; `→ name(args…) 48 chars` or `→ name(args…) ✘ error` for a
    tool call; text from tools and models cleaned of control characters and cut."""
    from agentmill.logs import strip_controls

    def clean(text: str, limit: int) -> str:
        text = strip_controls(text, keep_newlines=False)
        return text if len(text) <= limit else text[: limit - 1] + "…"

    if call.kind != "tool":
        return clean(call.name, _CALL_TEXT)
    text = f"→ {clean(call.name, _CALL_TEXT)}({clean(call.args or '', _CALL_ARGS)})"
    if call.error is not None:
        first_line = next(iter(call.error.strip().splitlines()), "")
        return f"{text} ✘ {clean(first_line, _CALL_TEXT)}"
    if call.size is not None:
        return f"{text} {call.size:,} chars"
    return text


_CALL_TEXT = 80
_CALL_ARGS = 60


def _cost_column(step: StepRecord) -> str:
    if step.model is None or str(step.status) != "succeeded":
        return ""
    if step.cost_usd is None:
        return "unknown"
    estimated = "~" if (step.usage or {}).get("estimated") else ""  # priced from an estimate
    return f"{estimated}${step.cost_usd:.4f}"


def _parse_status(value: str) -> RunStatus:
    from agentmill.errors import InputError
    from agentmill.store import RunStatus

    try:
        return RunStatus(value)
    except ValueError:
        choices = ", ".join(str(s) for s in RunStatus)
        raise InputError(f"unknown status {value!r}: use one of {choices}") from None


def _run_summary(run: RunRecord) -> dict[str, object]:
    return {
        "run_id": run.id,
        "workflow": run.workflow,
        "status": str(run.status),
        "created_at": run.created_at,
        "finished_at": run.finished_at,
        "usage": run.usage or {},
    }


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")
