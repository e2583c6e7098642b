"""A command-line tool as an agent: one contained process per call, in its own worktree.

The call's prompt is rendered into the tool's argument list (one template, one argument:
never a shell string). Its output is parsed by its preset into text, tool-use and session
events. A session id the tool reports is saved durably at once, so an attempt interrupted
by a crash resumes that session, in the same worktree, instead of starting over.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Mapping
from contextlib import asynccontextmanager
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
    commit_worktree,
    diff_worktree,
    open_worktree,
    remove_worktree,
)
from agentmill.errors import CliFailed
from agentmill.settings import Settings, granted_environment
from agentmill.spec.models import WORKTREE, AgentSpec
from agentmill.spec.presets import DEFAULT_PRESET, PresetSpec

__all__ = ["CliAgent", "CliCall", "PresetSlots", "cli_call"]

STDERR_TAIL = 20


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

    async def run(self, request: StepRequest, context: StepContext) -> StepResult:
        durable = as_durable(context)
        async with self._slots.hold(self._call.preset_name, self._call.preset.concurrency):
            tree = await self._worktree(request, durable)
            # Interrupted (timeout, cancel, shutdown): the process group is gone and the
            # worktree stays, with the session id, for the next attempt.
            result, summary = await self._execute(request, durable, tree)
            return await self._finish(request, durable, tree, result, summary)

    async def _worktree(self, request: StepRequest, context: DurableContext) -> Worktree | None:
        if self._call.repo is None:
            return None
        tree = await open_worktree(
            self._call.repo, self._call.worktree_root, request.run_id, request.key
        )
        if context.saved.get("worktree") != str(tree.path):
            await context.save(worktree=str(tree.path), branch=tree.branch)
        return tree

    async def _execute(
        self, request: StepRequest, context: DurableContext, tree: Worktree | None
    ) -> tuple[ProcessResult, CliSummary]:
        call = self._call
        cwd = tree.path if tree is not None else (call.workdir or Path.cwd())
        session = context.saved.get("session_id")
        variables = _variables(request, cwd, session if isinstance(session, str) else None)
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
        )
        parser = StreamParser(call.preset)
        relay = _Relay(parser, context, known_session=session)
        await end_leftovers(context.saved.get("process"), grace=call.grace)

        async def started(pid: int) -> None:
            await context.save(process=session_record(pid))

        result = await run_process(spec, on_lines=relay.on_lines, on_start=started)
        return result, parser.summary

    async def _finish(
        self,
        request: StepRequest,
        context: DurableContext,
        tree: Worktree | None,
        result: ProcessResult,
        summary: CliSummary,
    ) -> StepResult:
        details = _details(self._call.preset_name, result, summary, tree)
        if tree is not None:
            diff = await diff_worktree(tree)
            details["diff"] = {
                "files": list(diff.files),
                "stat": diff.stat,
                "patch": diff.patch,
                "truncated": diff.truncated,
            }
        failure = _failure(request, result, summary)
        if failure is not None:
            await context.save(diff=details.get("diff"), cli=details["cli"])
            await self._clean_up(tree, request, failed=True)
            raise failure
        await self._clean_up(tree, request, failed=False)
        output = summary.result if summary.result is not None else (summary.text or result.stdout)
        return StepResult(
            output=output,
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
        await commit_worktree(tree, f"agentmill: run {request.run_id}, step {request.key}")
        keep = self._call.keep_worktree
        if keep == "always" or (keep == "on-failure" and failed):
            return
        assert self._call.repo is not None
        await remove_worktree(self._call.repo, tree, delete_branch=False)


class _Relay:
    """Turns the child's lines into the run's events, in order; saves a new session id at
    once. The text lines of one pipe read become one `step_output` event (whole lines)."""

    def __init__(
        self, parser: StreamParser, context: DurableContext, *, known_session: object
    ) -> None:
        self._parser = parser
        self._context = context
        self._session = known_session
        self._text: list[str] = []

    async def on_lines(self, stream: str, lines: list[str]) -> None:
        if stream == "stderr":
            await self._context.emit_event("stderr", text="".join(f"{line}\n" for line in lines))
            return
        for line in lines:
            for event in self._parser.feed(line):
                await self._relay(event.kind, event.value)
        await self._flush_text()

    async def _relay(self, kind: str, value: Any) -> None:
        if kind == "text":
            self._text.append(str(value))
            return
        await self._flush_text()
        if kind == "tool":
            await self._context.emit_event("tool", tool=str(value))
        elif kind == "session" and value and value != self._session:
            self._session = value
            await self._context.save(session_id=value)
            await self._context.emit_event("session", session_id=value)

    async def _flush_text(self) -> None:
        if self._text:
            text, self._text = "".join(self._text), []
            await self._context.emit_text(text)


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
    if result.limit_hit:
        cli["limit"] = result.limit_hit
    if summary.session_id:
        cli["session_id"] = summary.session_id
    if tree is not None:
        cli["worktree"] = str(tree.path)
        cli["branch"] = tree.branch
    return {"cli": cli}


def _failure(request: StepRequest, result: ProcessResult, summary: CliSummary) -> CliFailed | None:
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
    if summary.error:
        reason += f": {summary.error}"
    tail = "\n".join(result.stderr_tail[-STDERR_TAIL:])
    message = f"command {reason}" + (f"; last lines of stderr:\n{tail}" if tail else "")
    return CliFailed(message, exit_code=result.exit_code, limit=result.limit_hit)


_LIMIT_WORDS = {
    "timeout": "it went past its timeout",
    "cpu": "it used up its CPU time limit (limits.cpu)",
    "memory": "it ran out of its memory limit (limits.memory)",
    "processes": "it started more processes than limits.processes allows",
}
