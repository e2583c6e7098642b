"""A command-line tool as an agent: one contained process per call, in its own worktree.

The call's prompt is rendered into the tool's argument list (one template, one argument:
never a shell string). Its output is parsed by its preset into text, tool-use and session
events. A session id the tool reports is saved durably at once, so an attempt interrupted
by a crash resumes that session, in the same worktree, instead of starting over.
"""

from __future__ import annotations

import asyncio
import re
import signal
import socket
from collections.abc import AsyncGenerator, Callable, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentmill.agents.base import (
    Agent,
    DurableContext,
    StepContext,
    StepRequest,
    StepResult,
    Usage,
    as_durable,
)
from agentmill.agents.cli.leftovers import end_leftovers, session_record
from agentmill.agents.cli.parse import CliSummary, StreamParser
from agentmill.agents.cli.presets import render_argv
from agentmill.agents.cli.process import Limits, ProcessResult, ProcessSpec, run_process
from agentmill.agents.cli.worktree import (
    Worktree,
    WorktreeDiff,
    commit_worktree,
    diff_worktree,
    open_worktree,
    remove_worktree,
)
from agentmill.errors import CliFailed, RunFailure, UserError
from agentmill.settings import Settings, granted_environment, is_secret_name
from agentmill.spec.models import WORKTREE, AgentSpec
from agentmill.spec.presets import DEFAULT_PRESET, PresetSpec

__all__ = ["CliAgent", "CliCall", "PresetSlots", "cli_call"]

STDERR_TAIL = 20
MAX_ERROR_CHARS = 2000
"""Of the error a tool reports; a failed step's whole message is kept under four times it."""


@dataclass(frozen=True, kw_only=True)
class CliCall:
    """Everything one command-line agent needs, resolved from its spec and preset."""

    preset_name: str
    preset: PresetSpec
    command: tuple[str, ...]
    resume: tuple[str, ...] | None
    """Arguments resuming a session (the preset's, when the agent keeps its command)."""
    env: Mapping[str, str]
    """The granted variables and their values (the child sees nothing else)."""
    stdin: str | None
    repo: Path | None
    """Worktrees come from this repository; None for a fixed `workdir`."""
    workdir: Path | None
    worktree_root: Path
    keep_worktree: str
    max_output: int
    grace: float
    limits: Limits = field(default_factory=Limits)
    ignore: tuple[str, ...] = ()
    """The preset's bookkeeping files, kept out of the diff and the commit."""


def cli_call(
    spec: AgentSpec,
    *,
    presets: Mapping[str, PresetSpec],
    base_dir: str | None,
    settings: Settings,
) -> CliCall:
    """Resolve a `runtime: cli` agent: its preset, paths, granted environment, limits."""
    name = spec.preset or DEFAULT_PRESET
    preset = presets[name]
    base = Path(base_dir) if base_dir else Path.cwd()
    in_worktree = spec.workdir in (None, WORKTREE)
    limits = spec.limits
    return CliCall(
        preset_name=name,
        preset=preset,
        command=(*(spec.command or preset.command), *spec.args),
        resume=(*preset.resume, *spec.args) if preset.resume and not spec.command else None,
        env=granted_environment(spec.env if spec.env is not None else preset.env),
        stdin=spec.stdin if spec.stdin is not None else preset.stdin,
        repo=(base / spec.repo).resolve() if in_worktree else None,
        workdir=None if in_worktree else (base / str(spec.workdir)).resolve(),
        worktree_root=settings.worktree_root,
        keep_worktree=spec.keep_worktree,
        max_output=spec.max_output,
        grace=spec.grace,
        limits=Limits(
            cpu_seconds=limits.cpu,
            memory_bytes=limits.memory,
            processes=limits.processes,
            open_files=limits.files,
        ),
        ignore=tuple(preset.ignore),
    )


class PresetSlots:
    """A cap on concurrent processes per preset, within one worker process."""

    def __init__(self) -> None:
        self._slots: dict[str, asyncio.Semaphore] = {}

    @asynccontextmanager
    async def hold(self, preset: str, cap: int | None) -> AsyncGenerator[None]:
        if cap is None:
            yield
            return
        slot = self._slots.setdefault(preset, asyncio.Semaphore(cap))
        async with slot:
            yield


class CliAgent(Agent):
    """Runs a command-line tool for each call."""

    def __init__(self, call: CliCall, *, slots: PresetSlots) -> None:
        self._call = call
        self._slots = slots
        self._redact = _redactor(call.env)

    async def run(self, request: StepRequest, context: StepContext) -> StepResult:
        durable = as_durable(context)
        async with self._slots.hold(self._call.preset_name, self._call.preset.concurrency):
            # What a dead worker's attempt left running must stop before this one starts.
            await end_leftovers(durable.saved.get("process"), grace=self._call.grace)
            tree = await self._worktree(request, durable)
            # Interrupted (timeout, cancel, shutdown): the process group is gone and the
            # worktree stays, with the session id, for the next attempt.
            outcome = await self._execute(request, durable, tree)
            if outcome[2] and _failure(outcome[0], outcome[1], "", self._redact) is not None:
                # The session could not be resumed (or failed once resumed): start over.
                await durable.save(session_id=None)
                outcome = await self._execute(request, durable, tree)
            return await self._finish(request, durable, tree, outcome)

    async def _worktree(self, request: StepRequest, context: DurableContext) -> Worktree | None:
        if self._call.repo is None:
            return None
        root = _worktree_root(context.saved.get("worktree"), self._call.worktree_root)
        _ignore_everything_in(root)
        tree = await open_worktree(self._call.repo, root, request.run_id, request.key)
        if context.saved.get("worktree") != str(tree.path):
            await context.save(worktree=str(tree.path), branch=tree.branch)
        return tree

    async def _execute(
        self, request: StepRequest, context: DurableContext, tree: Worktree | None
    ) -> tuple[ProcessResult, CliSummary, bool]:
        """Run the tool once; whether it resumed an earlier attempt's session."""
        call = self._call
        cwd = tree.path if tree is not None else (call.workdir or Path.cwd())
        session = _resumable_session(context.saved) if call.resume else None
        variables = _variables(request, cwd, session)
        templates = call.resume if session and call.resume else call.command
        stdin = render_argv([call.stdin], variables)[0] if call.stdin is not None else None
        spec = ProcessSpec(
            argv=render_argv(list(templates), variables),
            env={**call.env, **_identity(request)},
            cwd=str(cwd),
            stdin=None if stdin is None else stdin.encode(),
            max_output=call.max_output,
            grace=call.grace,
            limits=call.limits,
            identity="AGENTMILL_IDEMPOTENCY_KEY",
        )
        parser = StreamParser(call.preset)
        relay = _Relay(
            parser,
            context,
            known_session=session,
            redact=self._redact,
            plain=call.preset.output == "text",
        )

        async def started(pid: int) -> None:
            await context.save(process=session_record(pid))

        stopped: list[ProcessResult] = []
        try:
            result = await run_process(
                spec, on_lines=relay.on_lines, on_start=started, on_stopped=stopped.append
            )
        except BaseException:  # cancelled (timeout, cancel, shutdown), or on_lines failed
            if stopped:
                await self._note_stopped(context, stopped[0], parser.summary, tree)
            raise
        return result, parser.summary, session is not None

    async def _note_stopped(
        self,
        context: DurableContext,
        result: ProcessResult,
        summary: CliSummary,
        tree: Worktree | None,
    ) -> None:
        """Note how a stopped call's tool ended; a timed-out one also with its files (a git
        failure then must not take the timeout's place: the files are left out)."""
        timed_out = context.timed_out
        cli = _details(self._call.preset_name, result, summary, tree)["cli"]
        cli.update(_failure_details(result, self._redact, timed_out=timed_out))
        context.note(cli=cli)  # first: the entries added below still reach it, and a
        # second cancel during the diff cannot leave the attempt without it
        if timed_out:
            cli["limit"] = "timeout"
            if tree is not None:
                with suppress(RunFailure, UserError, OSError):
                    diff = await diff_worktree(tree, ignore=self._call.ignore)
                    cli["files"] = list(diff.files)

    async def _finish(
        self,
        request: StepRequest,
        context: DurableContext,
        tree: Worktree | None,
        outcome: tuple[ProcessResult, CliSummary, bool],
    ) -> StepResult:
        result, summary, _ = outcome
        details = _details(self._call.preset_name, result, summary, tree)
        if tree is not None:
            diff = await diff_worktree(tree, ignore=self._call.ignore)
            details["diff"] = _diff_json(diff, self._redact)
        failure = _failure(result, summary, _program(self._call), self._redact)
        if failure is not None:
            cli = details["cli"]
            cli.update(_failure_details(result, self._redact, timed_out=False))
            if "diff" in details:
                cli["files"] = details["diff"]["files"]
            context.note(cli=cli)
            await self._clean_up(tree, request, failed=True)
            raise failure
        await self._clean_up(tree, request, failed=False)
        output = summary.result if summary.result is not None else (summary.text or result.stdout)
        return StepResult(
            output=self._redact(output),
            model=f"cli:{self._call.preset_name}",
            usage=Usage(
                input_tokens=summary.input_tokens or 0,
                output_tokens=summary.output_tokens or 0,
                requests=1,
            ),
            cost_usd=summary.cost_usd,
            details=details,
        )

    async def _clean_up(self, tree: Worktree | None, request: StepRequest, *, failed: bool) -> None:
        """Commit the step's changes on its branch, then drop the worktree unless kept."""
        if tree is None:
            return
        message = f"agentmill: run {request.run_id}, step {request.key}"
        await commit_worktree(tree, message, ignore=self._call.ignore)
        keep = self._call.keep_worktree
        if keep == "always" or (keep == "on-failure" and failed):
            return
        assert self._call.repo is not None
        await remove_worktree(self._call.repo, tree, delete_branch=False)


class _Relay:
    """Turns the child's lines into the run's events, in order; saves a new session id at
    once. The text lines of one pipe read become one `step_output` event (whole lines).
    Lines past `max_output` are only parsed (the final result and cost come last)."""

    def __init__(
        self,
        parser: StreamParser,
        context: DurableContext,
        *,
        known_session: object,
        redact: Callable[[str], str],
        plain: bool,
    ) -> None:
        self._parser = parser
        self._context = context
        self._session = known_session
        self._redact = redact
        self._text: list[str] = []
        self._plain = plain

    async def on_lines(self, stream: str, lines: list[str], dropped: bool) -> None:
        if stream == "stderr":
            if not dropped:
                text = "".join(f"{line}\n" for line in lines)
                await self._context.emit_event("stderr", text=self._redact(text))
            return
        if dropped and self._plain:
            return
        for line in lines:
            for event in self._parser.feed(line):
                if not dropped or event.kind == "session":
                    await self._relay(event.kind, event.value)
        await self._flush_text()

    async def _relay(self, kind: str, value: Any) -> None:
        if kind == "text":
            self._text.append(str(value))
            return
        await self._flush_text()
        if kind == "tool":
            await self._context.emit_event("tool", tool=self._redact(str(value)))
        elif kind == "session" and value and value != self._session:
            self._session = value
            await self._context.save(session_id=value, session_host=socket.gethostname())
            await self._context.emit_event("session", session_id=value)

    async def _flush_text(self) -> None:
        if self._text:
            text, self._text = "".join(self._text), []
            await self._context.emit_text(self._redact(text))


def _redactor(env: Mapping[str, str]) -> Callable[[str], str]:
    """Hides the values of granted credentials (`*_API_KEY`, `*_TOKEN`, ...) in what the
    tool prints, before it reaches the event log or an error message."""
    secrets = sorted(
        (value for name, value in env.items() if is_secret_name(name) and len(value) >= 8),
        key=len,
        reverse=True,
    )

    def redact(text: str) -> str:
        for secret in secrets:
            if secret in text:
                text = text.replace(secret, "[redacted]")
        return text

    return redact


def _worktree_root(saved_path: object, configured: Path) -> Path:
    """Where this call's worktree is: where an earlier attempt put it (`<root>/<run>/<key>`),
    even if this worker's root differs, else the configured root."""
    if isinstance(saved_path, str) and Path(saved_path).is_dir():
        return Path(saved_path).parents[1]
    return configured


def _ignore_everything_in(root: Path) -> None:
    """Worktrees under a repository's checkout (the default `.agentmill/worktrees`) must not
    show there as untracked files. Only a root created here gets the ignore file: a
    directory the user made is theirs."""
    if root.exists():
        return
    root.mkdir(parents=True)
    (root / ".gitignore").write_text("*\n", encoding="utf-8")


def _resumable_session(saved: Mapping[str, Any]) -> str | None:
    """The tool session an interrupted attempt reported, if it can be resumed here (tools
    keep sessions in the user's home directory of the machine that ran them)."""
    session = saved.get("session_id")
    if not isinstance(session, str) or not session:
        return None
    return session if saved.get("session_host") in (None, socket.gethostname()) else None


def _diff_json(diff: WorktreeDiff, redact: Callable[[str], str]) -> dict[str, Any]:
    return {
        "files": list(diff.files),
        "stat": diff.stat,
        "patch": redact(diff.patch),
        "truncated": diff.truncated,
    }


def _variables(request: StepRequest, cwd: Path, session: str | None) -> dict[str, str]:
    values = {
        "prompt": request.prompt,
        "run_id": request.run_id,
        "step_id": request.key,
        "workdir": str(cwd),
    }
    if session is not None:
        values["session_id"] = session
    return values


def _identity(request: StepRequest) -> dict[str, str]:
    return {
        "AGENTMILL_RUN_ID": request.run_id,
        "AGENTMILL_STEP_ID": request.key,
        "AGENTMILL_IDEMPOTENCY_KEY": f"{request.run_id}:{request.key}",
    }


def _details(
    preset: str, result: ProcessResult, summary: CliSummary, tree: Worktree | None
) -> dict[str, Any]:
    cli: dict[str, Any] = {
        "preset": preset,
        "exit_code": result.exit_code,
        "duration": round(result.duration, 3),
        "truncated": result.truncated,
        "tools": summary.tools,
    }
    if result.exit_code is not None and result.exit_code < 0:
        cli["signal"] = _signal_name(-result.exit_code)
    if result.limit_hit:
        cli["limit"] = result.limit_hit
    if summary.session_id:
        cli["session_id"] = summary.session_id
    if tree is not None:
        cli["worktree"] = str(tree.path)
        cli["branch"] = tree.branch
    return {"cli": cli}


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def _failure_details(
    result: ProcessResult, redact: Callable[[str], str], *, timed_out: bool
) -> dict[str, Any]:
    """What `details.cli` adds for a failed attempt: whether it timed out, the stderr tail."""
    return {
        "timed_out": timed_out,
        "stderr_tail": [redact(line) for line in result.stderr_tail[-STDERR_TAIL:]],
    }


def _program(call: CliCall) -> str:
    """The tool's name for messages: its program, or its preset's name for a template."""
    program = call.command[0] if call.command else ""
    if not program or "{" in program:
        return call.preset_name
    return Path(program).name


def _failure(
    result: ProcessResult, summary: CliSummary, program: str, redact: Callable[[str], str]
) -> CliFailed | None:
    """The step's error, led by what the tool said went wrong: the error it reported, else
    its last stderr line that speaks of an error; then how it ended, then stderr's tail."""
    if result.limit_hit is None and result.exit_code == 0 and not summary.error:
        return None
    if result.limit_hit is not None:
        reason = f"was stopped: {_LIMIT_WORDS.get(result.limit_hit, result.limit_hit)}"
    elif result.exit_code is not None and result.exit_code < 0:
        reason = f"was killed by signal {-result.exit_code}"
    elif result.exit_code != 0:
        reason = f"exited with status {result.exit_code}"
    else:
        reason = "reported an error"
    said = summary.error or _error_line(result.stderr_tail)
    if said:
        message = f"{program}: {_clip(said, MAX_ERROR_CHARS)} ({reason})"
    else:
        message = f"{program} {reason}"
    tail = "\n".join(result.stderr_tail[-STDERR_TAIL:])
    message += f"; last lines of stderr:\n{tail}" if tail else ""
    return CliFailed(
        redact(_clip(message, 4 * MAX_ERROR_CHARS)),
        exit_code=result.exit_code,
        limit=result.limit_hit,
    )


def _error_line(lines: tuple[str, ...]) -> str | None:
    """The last stderr line that says it is an error (`Error: ...`, `fatal: ...`)."""
    for line in reversed(lines):
        if _ERROR_WORD.search(line):
            return line.strip()
    return None


_ERROR_WORD = re.compile(r"\b(error|fatal|unauthori[sz]ed|forbidden)\b", re.IGNORECASE)


def _clip(text: str, limit: int) -> str:
    """`text` cut in the middle to at most about `limit` characters: its start says what
    failed, its end holds the last lines."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]} [... {len(text) - 2 * half:,} characters ...] {text[-half:]}"


_LIMIT_WORDS = {
    "timeout": "it went past its timeout",
    "cpu": "it used up its CPU time limit (limits.cpu)",
    "memory": "it ran out of its memory limit (limits.memory)",
    "processes": "it started more processes than limits.processes allows",
}
