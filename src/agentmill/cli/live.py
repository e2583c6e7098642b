"""Showing a run as it happens: a live step table with streamed text on a terminal,
plain progress lines otherwise."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from shlex import quote
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from agentmill.logs import strip_controls
from agentmill.store import EventRecord, StepRecord

__all__ = ["ProgressView"]

_STATUS_STYLE = {
    "pending": "dim",
    "running": "cyan",
    "retrying": "yellow",
    "succeeded": "green",
    "failed": "bold red",
    "skipped": "dim",
    "blocked": "red",
    "waiting": "bold yellow",
    "interrupted": "yellow",
    "cancelled": "yellow",
}
_UNDER_WAY = frozenset({"running", "retrying", "waiting"})
_RUN_ENDS = frozenset({"run_finished", "run_interrupted"})
_TAIL_LINES = 12


@dataclass
class _StepView:
    key: str
    status: str = "pending"
    attempt: int = 0
    started: float | None = None
    finished: float | None = None
    tokens: int = 0
    text: str = ""
    attempts_text: dict[int, str] = field(default_factory=dict)
    stderr_lines: int = 0

    def elapsed(self) -> str:
        if self.started is None:
            return ""
        end = self.finished or time.time()
        return f"{end - self.started:.1f}s"


class ProgressView:
    """Consumes a run's events and renders them."""

    def __init__(self, console: Console, *, step_ids: list[str]) -> None:
        self._console = console
        self._steps: dict[str, _StepView] = {key: _StepView(key) for key in step_ids}
        self._live: Live | None = None
        self._last_text_step: str | None = None

    def __enter__(self) -> ProgressView:
        if self._console.is_terminal:
            # Rendered afresh on every refresh (8/s), so elapsed times tick between events.
            self._live = Live(
                console=self._console,
                get_renderable=self._render,
                refresh_per_second=8,
                transient=False,
            )
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)  # renders the final state once more

    def restore(self, records: list[StepRecord]) -> None:
        """Show the state of calls from an earlier execution (when resuming)."""
        for record in records:
            view = self._steps.setdefault(record.key, _StepView(record.key))
            view.status, view.attempt = str(record.status), record.attempt
            view.started, view.finished = record.started_at, record.finished_at
            view.tokens = int((record.usage or {}).get("output_tokens", 0))

    def handle(self, event: EventRecord) -> None:
        if event.step is not None:
            self._on_step_event(event)
        elif event.kind == "run_resumed":
            self._line(f"resuming: {len(event.data.get('reused', []))} finished calls reused")
        elif event.kind in _RUN_ENDS:
            self._run_ended(event)
        if self._live is not None and event.kind != "step_output":
            # Text chunks ride on the 8/s auto-refresh; state changes show at once.
            self._live.refresh()

    def _on_step_event(self, event: EventRecord) -> None:
        assert event.step is not None
        view = self._steps.setdefault(event.step, _StepView(event.step))
        handler = _HANDLERS.get(event.kind)
        if handler is not None:
            handler(self, view, event)

    def _started(self, view: _StepView, event: EventRecord) -> None:
        view.status, view.attempt = "running", event.attempt
        view.started, view.finished, view.text = event.ts, None, ""
        view.stderr_lines = 0
        self._line(f"[cyan]▶[/] {escape(view.key)} started (attempt {event.attempt})")

    def _output(self, view: _StepView, event: EventRecord) -> None:
        if event.attempt != view.attempt:
            return  # a chunk of an attempt that was superseded
        view.text += str(event.data.get("text", ""))
        view.tokens += 1
        self._last_text_step = view.key

    def _approval_requested(self, view: _StepView, event: EventRecord) -> None:
        view.status = "waiting"
        prompt = str(event.data.get("prompt") or "").strip()
        expires = time.strftime("%Y-%m-%d %H:%M", time.localtime(event.data.get("expires_at", 0)))
        # A tool call's gate (`step#call`) is decided under its own id, maybe with --args.
        gate = str(event.data.get("gate") or view.key)
        command = f"agentmill approve {escape(event.run_id)} {escape(quote(gate))}"
        edit = " [--args JSON]" if "gate" in event.data else ""
        reason = str(event.data.get("reason") or "").strip()
        self._line(
            f"[bold yellow]⏸[/] {escape(gate)} waits for approval"
            + (f": {escape(prompt)}" if prompt else "")
            + (f"\n    reason: {escape(_first_line(reason))}" if reason else "")
            + f"\n    {command} [--reject]{edit}"
            + f"  (until {expires}, then {escape(str(event.data.get('on_timeout', 'reject')))})"
        )

    def _approval_decided(self, view: _StepView, event: EventRecord) -> None:
        by = event.data.get("by")
        outcome = str(event.data.get("status", "decided"))
        if event.data.get("edited"):
            outcome += " with edited arguments"
        decider = f" by {escape(str(by))}" if by else ""
        gate = event.data.get("gate")
        if gate is not None and view.status == "waiting":
            view.status = "running"  # the tool call goes on (or the model reads why not)
        self._line(f"[yellow]⏵[/] {escape(str(gate or view.key))} {escape(outcome)}{decider}")

    def _finished(self, view: _StepView, event: EventRecord) -> None:
        view.status, view.finished = "succeeded", event.ts
        if event.data.get("gate"):
            return  # `_approval_decided` said how
        usage: dict[str, Any] = event.data.get("usage") or {}
        view.tokens = int(usage.get("output_tokens") or view.tokens)
        estimated = "~" if usage.get("estimated") else ""  # the provider reported no usage
        what = _cli_summary(event.data) or f"{estimated}{view.tokens} tokens"
        self._line(f"[green]✔[/] {escape(view.key)} finished in {view.elapsed()} ({what})")
        if self._live is None and view.text.strip():
            self._console.print(Text(_indent(view.text.strip())))

    def _failed(self, view: _StepView, event: EventRecord) -> None:
        view.status, view.finished = "failed", event.ts
        self._line(f"[bold red]✘[/] {escape(str(event.data.get('error', view.key)))}")

    def _retrying(self, view: _StepView, event: EventRecord) -> None:
        view.status = "retrying"
        self._line(
            f"[yellow]↻[/] {escape(view.key)} attempt {event.attempt} failed: "
            f"{escape(str(event.data.get('error')))}; retrying in {event.data.get('delay')}s"
        )

    def _tool(self, view: _StepView, event: EventRecord) -> None:
        if event.attempt == view.attempt:
            self._line(f"[dim]  {escape(view.key)} uses {escape(str(event.data.get('tool')))}[/]")

    def _tool_call(self, view: _StepView, event: EventRecord) -> None:
        """`  → step name(args…)`: a tool call of an agent with tools, as it starts."""
        if event.attempt != view.attempt:
            return
        name, args = _untrusted(event.data.get("name")), _untrusted(event.data.get("args"))
        self._line(f"[dim]  → {escape(view.key)}[/] {escape(name)}({escape(_cut(args, 80))})")

    def _tool_result(self, view: _StepView, event: EventRecord) -> None:
        """`  ← step name 0.12s, 48 chars`, or `  ✘ step name: <error>` (the model sees it)."""
        if event.attempt != view.attempt:
            return
        name = escape(_untrusted(event.data.get("name")))
        took = (
            "(recorded)"
            if event.data.get("replayed")
            else f"{float(event.data.get('duration') or 0.0):.2f}s"
        )
        if error := event.data.get("error"):
            what = escape(_first_line(strip_controls(str(error))))
            self._line(f"[yellow]  ✘ {escape(view.key)}[/] {name} {took}: {what}")
        else:
            size = int(event.data.get("size") or 0)
            self._line(f"[dim]  ← {escape(view.key)}[/] {name} {took}, {size:,} chars")

    def _tool_output(self, view: _StepView, event: EventRecord) -> None:
        """Text an agent used as a tool streams: shown in the step's live panel, not in the
        plain output (the step's own answer is printed there when it finishes)."""
        if event.attempt != view.attempt or self._live is None:
            return
        view.text += strip_controls(str(event.data.get("text", "")))
        self._last_text_step = view.key

    def _stderr(self, view: _StepView, event: EventRecord) -> None:
        if event.attempt != view.attempt:
            return
        for line in str(event.data.get("text", "")).splitlines():
            view.stderr_lines += 1
            if view.stderr_lines <= _STDERR_SHOWN:
                self._line(f"[dim]  {escape(view.key)} stderr: {escape(line)}[/]")
            elif view.stderr_lines == _STDERR_SHOWN + 1:
                more = f"agentmill runs logs {escape(event.run_id)}"
                self._line(f"[dim]  {escape(view.key)} stderr: ... (the rest: {more})[/]")

    def _session(self, view: _StepView, event: EventRecord) -> None:
        session = escape(str(event.data.get("session_id")))
        self._line(f"[dim]  {escape(view.key)} tool session {session}[/]")

    def _skipped(self, view: _StepView, event: EventRecord) -> None:
        view.status = "skipped"
        self._line(f"[dim]⤼ {escape(view.key)} skipped (when: false)[/]")

    def _waiting(self, view: _StepView, event: EventRecord) -> None:
        what = escape(str(event.data.get("waiting_for", "its turn")))
        self._line(f"[dim]  {escape(view.key)} waits for {what} (other steps are using it)[/]")

    def _blocked(self, view: _StepView, event: EventRecord) -> None:
        view.status = "blocked"
        self._line(f"[red]⊘ {escape(view.key)} not run: needs failed steps[/]")

    def _run_ended(self, event: EventRecord) -> None:
        """Steps still under way when the run ends stop there (and their clocks too)."""
        if event.kind == "run_interrupted":
            outcome = "interrupted"
        elif event.data.get("status") == "cancelled":
            outcome = "cancelled"
        else:
            return  # a finished run's steps all ended with their own events
        for view in self._steps.values():
            if view.status in _UNDER_WAY:
                view.status, view.finished = outcome, event.ts

    def _line(self, markup: str) -> None:
        """One progress line above the table, never broken by Rich: the commands in it
        (`agentmill approve ...`) stay whole when copied."""
        line = Text.from_markup(markup, overflow="ignore")
        line.no_wrap = True
        console = self._live.console if self._live is not None else self._console
        # In a Group, the line keeps its own no_wrap (print would join it into a new Text);
        # print's soft_wrap would instead apply to the live table drawn with it.
        console.print(Group(line), crop=False)

    def _render(self) -> Group:
        table = Table(box=None, pad_edge=False, show_header=True, header_style="bold")
        for column in ("step", "status", "elapsed", "tokens"):
            table.add_column(column)
        for view in self._rows():
            style = _STATUS_STYLE.get(view.status, "")
            table.add_row(
                escape(view.key),
                f"[{style}]{view.status}[/]",
                view.elapsed(),
                str(view.tokens or ""),
            )
        parts: list[Any] = [table]
        streaming = self._steps.get(self._last_text_step or "")
        if streaming is not None and streaming.status in {"running", "retrying"}:
            tail = "\n".join(streaming.text.splitlines()[-_TAIL_LINES:])
            parts.append(Panel(Text(tail), title=escape(streaming.key), border_style="cyan"))
        return Group(*parts)

    def _rows(self) -> list[_StepView]:
        """The steps in workflow order, each fan-out step followed by its items (`s[0]`,
        ...); a fan-out step has no events of its own, its row sums up its items'."""
        views = list(self._steps.values())  # a copy: the refresh thread renders meanwhile
        items: dict[str, list[_StepView]] = {}
        for view in views:
            parent = _parent_key(view.key)
            if parent in self._steps:
                items.setdefault(parent, []).append(view)
        rows: list[_StepView] = []
        for view in views:
            if _parent_key(view.key) in self._steps:
                continue  # listed under its step
            own = items.get(view.key, [])
            rows.append(
                _fan_out_summary(view.key, own) if own and view.status == "pending" else view
            )
            rows.extend(own)
        return rows


def _parent_key(key: str) -> str | None:
    """`review` for the item key `review[3]`, None for a step's own key."""
    stem, bracket, rest = key.rpartition("[")
    return stem if bracket and rest.endswith("]") and rest[:-1].isdigit() else None


def _fan_out_summary(key: str, items: list[_StepView]) -> _StepView:
    under_way = any(item.status in _UNDER_WAY for item in items)
    statuses = {item.status for item in items}
    if under_way or "pending" in statuses:
        status, finished = "running", None
    else:
        status = "failed" if statuses & {"failed", "blocked"} else "succeeded"
        status = next((s for s in ("interrupted", "cancelled") if s in statuses), status)
        finished = max((item.finished or 0.0) for item in items) or None
    started = min((item.started for item in items if item.started is not None), default=None)
    tokens = sum(item.tokens for item in items)
    return _StepView(key, status=status, started=started, finished=finished, tokens=tokens)


_STDERR_SHOWN = 20
"""stderr lines of a step shown live; the event log has them all."""


def _cli_summary(data: dict[str, Any]) -> str | None:
    """`exit 0, 2 files changed` for a command-line step, None for others."""
    details: dict[str, Any] = data.get("details") or {}
    cli: dict[str, Any] | None = details.get("cli")
    if cli is None:
        return None
    files = len((details.get("diff") or {}).get("files") or [])
    changed = f", {files} file{'s' if files != 1 else ''} changed" if "diff" in details else ""
    return f"exit {cli.get('exit_code')}{changed}"


def _first_line(text: str, limit: int = 200) -> str:
    line = text.splitlines()[0] if text else ""
    return line[:limit] + ("…" if len(line) > limit or "\n" in text else "")


def _untrusted(value: object) -> str:
    """Text from a tool, an MCP server or a model, on one line without control characters."""
    return strip_controls(str(value if value is not None else ""), keep_newlines=False)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _indent(text: str) -> str:
    return "\n".join(f"    {line}" for line in text.splitlines())


_HANDLERS = {
    "step_started": ProgressView._started,
    "step_output": ProgressView._output,
    "step_finished": ProgressView._finished,
    "step_failed": ProgressView._failed,
    "step_retrying": ProgressView._retrying,
    "step_waiting": ProgressView._waiting,
    "step_skipped": ProgressView._skipped,
    "step_tool": ProgressView._tool,
    "step_tool_call": ProgressView._tool_call,
    "step_tool_result": ProgressView._tool_result,
    "step_tool_output": ProgressView._tool_output,
    "step_session": ProgressView._session,
    "step_stderr": ProgressView._stderr,
    "step_blocked": ProgressView._blocked,
    "approval_requested": ProgressView._approval_requested,
    "approval_decided": ProgressView._approval_decided,
}
