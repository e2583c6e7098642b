"""Tool calls of the durable loop: recorded, guarded, approved, visible.

Every tool call of a step goes through the toolset `recorded_toolset` returns:

1. A call the step already finished (an earlier attempt, before a crash) returns its
   recorded result, or shows the model its recorded error again; it is not run.
2. The guards: `max_tool_calls`, the same call repeated, failures in a row. A tripped guard
   does not run the call; the model is told to answer with what it has (the loop then offers
   no more tools), and the step ends with the reason in its details.
3. A call that needs approval waits for a person's decision (`ToolApprovals`): approved (as
   asked or with edited arguments) it runs; rejected, the model sees the reviewer's message.
4. The call runs with `current_call()` set (its idempotency key), a `tool_call` event before
   and a `tool_result` event after, and its result committed before the model sees it.

A tool's error goes back to the model as a retry prompt (pydantic-ai's `ModelRetry`), with
the loop's retry limit; it never crashes the step by itself. The exceptions are an agent
used as a tool whose provider failed or whose budget refused it: those end the step's
attempt like the step's own request would (`_ENDS_THE_ATTEMPT`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from agentmill.agents.tools.context import ToolCall, ToolOutcome, executing
from agentmill.errors import BudgetExceeded, ProviderError
from agentmill.logs import Redactor
from agentmill.store.records import CallRecord, CallStatus

if TYPE_CHECKING:
    from pydantic_ai.tools import RunContext, ToolDefinition
    from pydantic_ai.toolsets import AbstractToolset, ToolsetTool

    from agentmill.agents.tools.loop import CallLog, LoopLimits, LoopState

__all__ = ["ToolApprovals", "ToolDecision", "recorded_toolset"]

logger = logging.getLogger("agentmill.tools")

EVENT_PREVIEW_CHARS = 2000
"""Arguments and results are shown in events up to this many characters."""

_REDACTOR = Redactor()

_ENDS_THE_ATTEMPT = (ProviderError, BudgetExceeded)
"""Failures of an agent used as a tool that end the step's attempt instead of going to
the model: a provider failure is retried as the step's (the next attempt replays the
child's finished requests and calls), a budget refusal stops the step's spending."""


@dataclass(frozen=True, kw_only=True)
class ToolDecision:
    """A person's decision on a tool call."""

    approved: bool
    arguments: dict[str, Any] | None = None
    """Edited arguments to run the call with, instead of the model's."""
    message: str = ""
    """What the reviewer wrote; a rejected call shows it to the model."""
    decided_by: str | None = None


class ToolApprovals(Protocol):
    """Waits, durably, for a person to decide on one tool call (one gate per call)."""

    async def decide(
        self,
        *,
        run_id: str,
        step: str,
        call_id: str,
        tool: str,
        arguments: dict[str, Any],
        reason: str,
        on_wait: Callable[[], Awaitable[None]],
    ) -> ToolDecision:
        """The decision on the call; `on_wait` is awaited once if the call has to wait."""
        ...


def recorded_toolset(
    wrapped: AbstractToolset[Any],
    *,
    state: LoopState,
    log: CallLog,
    limits: LoopLimits,
    approvals: ToolApprovals | None,
    needs_approval: Callable[[ToolDefinition], bool],
    workspace: Path | None,
) -> AbstractToolset[Any]:
    """`wrapped` with every call recorded, guarded and approved (see the module docstring)."""
    from pydantic_ai.toolsets import WrapperToolset

    calls = _Calls(state, log, limits, approvals, workspace)

    class Recorded(WrapperToolset[Any]):
        async def get_tools(self, ctx: RunContext[Any]) -> dict[str, ToolsetTool[Any]]:
            # Asked before each model request: the last one (max_turns) offers no tools, so
            # a call the model makes there anyway is refused, not run.
            if state.finish_reason is not None or state.turn + 1 >= limits.max_turns:
                return {}
            return await self.wrapped.get_tools(ctx)

        async def call_tool(
            self,
            name: str,
            tool_args: dict[str, Any],
            ctx: RunContext[Any],
            tool: ToolsetTool[Any],
        ) -> Any:
            async def run(arguments: dict[str, Any]) -> Any:
                if arguments is not tool_args:
                    # Edited by the approver: pydantic-ai validated only the model's.
                    arguments = tool.args_validator.validate_python(arguments)
                return await self.wrapped.call_tool(name, arguments, ctx, tool)

            approve = needs_approval(tool.tool_def)
            return await calls.call(name, tool_args, ctx.tool_call_id or "", run, approve=approve)

    return Recorded(wrapped)


class _Calls:
    """The tool calls of one attempt of a step."""

    def __init__(
        self,
        state: LoopState,
        log: CallLog,
        limits: LoopLimits,
        approvals: ToolApprovals | None,
        workspace: Path | None,
    ) -> None:
        self._state = state
        self._log = log
        self._limits = limits
        self._approvals = approvals
        self._workspace = workspace
        self._seen: dict[str, int] = {}
        self._failures_in_a_row = 0

    async def call(
        self,
        name: str,
        arguments: dict[str, Any],
        tool_call_id: str,
        run: Callable[[dict[str, Any]], Awaitable[Any]],
        *,
        approve: bool,
    ) -> Any:
        state = self._state
        call_id = state.call_ids.get(tool_call_id) or f"t{state.turn}.{tool_call_id[:40]}"
        state.tool_calls += 1
        record = state.recorded.get(call_id)
        if record is not None and record.status in {CallStatus.SUCCEEDED, CallStatus.FAILED}:
            return await self._replay(call_id, record, name, arguments)
        stopped = self._guard(name, arguments)
        self._started(name, arguments)
        if stopped is not None:
            state.finish(stopped)
            message = f"Not run: {stopped}. Stop calling tools and answer with what you have."
            return await self._refuse(call_id, name, arguments, message, stopped=stopped)
        if approve:
            decision = await self._approval(call_id, name, arguments, record)
            if not decision.approved:
                return await self._refuse(call_id, name, arguments, _rejected(decision))
            arguments = decision.arguments if decision.arguments is not None else arguments
        return await self._execute(call_id, name, arguments, run)

    async def _replay(
        self, call_id: str, record: CallRecord, name: str, arguments: dict[str, Any]
    ) -> Any:
        """What a finished call gave the model the first time (it does not run again). Its
        events are shown again, marked `replayed`: clients drop the superseded attempt's."""
        from pydantic_ai.exceptions import ModelRetry

        context = self._state.context
        await context.emit_event(
            "tool_call", call=call_id, name=name, args=_preview(_plain(arguments)), replayed=True
        )
        size = len(json.dumps(record.result)) if record.status is CallStatus.SUCCEEDED else 0
        error = {"error": _redacted(record.error)} if record.error else {}
        await context.emit_event(
            "tool_result", call=call_id, name=name, size=size, replayed=True, **error
        )
        details = record.details or {}
        if details.get("stopped"):
            self._state.finish(str(details["stopped"]))
        self._started(name, arguments)
        self._ended(failed=record.status is CallStatus.FAILED)
        if record.status is CallStatus.SUCCEEDED:
            if record.usage is not None:
                self._state.account(record.usage, record.cost_usd)
            return record.result
        if details.get("refused"):
            return record.error
        raise ModelRetry(record.error or "the tool failed")

    def _guard(self, name: str, arguments: dict[str, Any]) -> str | None:
        """Why the call must not run (the model is then told to finish), or None."""
        limits = self._limits
        if self._state.tool_calls > limits.max_tool_calls:
            reason = f"max_tool_calls ({limits.max_tool_calls}) reached"
        elif self._seen.get(_signature(name, arguments), 0) + 1 >= limits.max_repeats:
            reason = (
                f"the same call ({name} with the same arguments) was made"
                f" {limits.max_repeats} times"
            )
        elif self._failures_in_a_row >= limits.max_failures_in_a_row:
            reason = f"{self._failures_in_a_row} tool calls failed in a row"
        else:
            return None
        return reason

    def _started(self, name: str, arguments: dict[str, Any]) -> None:
        """Count a call as it starts: calls of one response run at once, and a replay
        counts them in their order, so the repeat guard decides alike on every attempt."""
        signature = _signature(name, arguments)
        self._seen[signature] = self._seen.get(signature, 0) + 1

    def _ended(self, *, failed: bool) -> None:
        self._failures_in_a_row = self._failures_in_a_row + 1 if failed else 0

    async def _approval(
        self, call_id: str, name: str, arguments: dict[str, Any], record: CallRecord | None
    ) -> ToolDecision:
        if self._approvals is None:
            return ToolDecision(approved=False, message="no one can approve tool calls here")
        state = self._state
        waiting = record or self._record(call_id, name, arguments, CallStatus.WAITING)

        async def on_wait() -> None:
            self._log.put(replace(waiting, status=CallStatus.WAITING))
            await self._log.commit()

        # The gate announces itself and its decision (`approval_requested`, `_decided`).
        return await self._approvals.decide(
            run_id=state.request.run_id,
            step=state.step,
            call_id=call_id,
            tool=name,
            arguments=_plain(arguments),
            reason=state.reason,
            on_wait=on_wait,
        )

    async def _refuse(
        self,
        call_id: str,
        name: str,
        arguments: dict[str, Any],
        message: str,
        *,
        stopped: str | None = None,
    ) -> str:
        """Record a call that did not run; the model gets `message` as its result."""
        record = self._record(call_id, name, arguments, CallStatus.FAILED)
        details: dict[str, Any] = {"refused": True}
        if stopped is not None:
            details["stopped"] = stopped
        finished = replace(record, error=message, finished_at=time.time(), details=details)
        self._log.put(finished)
        await self._log.commit()
        await self._state.context.emit_event(
            "tool_result", call=call_id, name=name, duration=0.0, size=0, error=message
        )
        self._ended(failed=False)
        return message

    async def _execute(
        self,
        call_id: str,
        name: str,
        arguments: dict[str, Any],
        run: Callable[[dict[str, Any]], Awaitable[Any]],
    ) -> Any:
        from pydantic_ai.exceptions import ModelRetry

        state = self._state
        record = self._record(call_id, name, arguments, CallStatus.RUNNING)
        self._log.put(record)
        await state.context.emit_event(
            "tool_call", call=call_id, name=name, args=_preview(_plain(arguments))
        )
        started = time.monotonic()
        outcome, error = await self._run(call_id, name, arguments, run)
        duration = round(time.monotonic() - started, 4)
        status = CallStatus.FAILED if error is not None else CallStatus.SUCCEEDED
        result = outcome.value if isinstance(outcome, ToolOutcome) else outcome
        finished = replace(
            record, status=status, result=result, error=error, finished_at=time.time()
        )
        if isinstance(outcome, ToolOutcome):
            usage = outcome.usage.to_json()
            finished = replace(
                finished, usage=usage, cost_usd=outcome.cost_usd, details={"model": outcome.model}
            )
            state.account(usage, outcome.cost_usd)
        self._log.put(finished)
        await self._log.commit()
        size = len(json.dumps(result)) if error is None else 0
        await state.context.emit_event(
            "tool_result",
            call=call_id,
            name=name,
            duration=duration,
            size=size,
            **({"error": _redacted(error)} if error is not None else {}),
        )
        self._ended(failed=error is not None)
        if error is not None:
            raise ModelRetry(error)
        return result

    async def _run(
        self,
        call_id: str,
        name: str,
        arguments: dict[str, Any],
        run: Callable[[dict[str, Any]], Awaitable[Any]],
    ) -> tuple[Any, str | None]:
        """The tool's result as JSON, or the error the model is shown."""
        from pydantic_ai.exceptions import ModelRetry

        state = self._state
        call = ToolCall(
            run_id=state.request.run_id,
            step=state.step,
            name=name,
            call_id=call_id,
            idempotency_key=f"{state.request.run_id}/{state.step}/{call_id}",
            workspace=self._workspace,
            attempt=state.request.attempt,
            stream=lambda text: state.context.emit_event("tool_output", call=call_id, text=text),
        )
        try:
            with executing(call):
                value = await run(arguments)
        except ModelRetry as exc:
            return None, exc.message
        except (asyncio.CancelledError, *_ENDS_THE_ATTEMPT):
            raise
        except Exception as exc:  # noqa: BLE001 - a tool's failure is the model's to handle
            logger.info("tool %s (call %s) failed: %s", name, call_id, _redacted(str(exc)))
            return None, f"{type(exc).__name__}: {exc}"
        except SystemExit as exc:
            # A tool calling sys.exit (argparse on a bad flag) must not end the worker.
            logger.info("tool %s (call %s) exited with %r", name, call_id, exc.code)
            return None, f"SystemExit: the tool exited with {exc.code!r}"
        if isinstance(value, ToolOutcome):
            return replace(value, value=_jsonable(value.value, self._limits.max_result_chars)), None
        return _jsonable(value, self._limits.max_result_chars), None

    def _record(
        self, call_id: str, name: str, arguments: dict[str, Any], status: CallStatus
    ) -> CallRecord:
        state = self._state
        return CallRecord(
            run_id=state.request.run_id,
            step=state.step,
            call_id=call_id,
            kind="tool",
            name=name,
            status=status,
            attempt=state.request.attempt,
            arguments=_plain(arguments),
            started_at=time.time(),
        )


def _rejected(decision: ToolDecision) -> str:
    who = f" by {decision.decided_by}" if decision.decided_by else ""
    message = f": {decision.message}" if decision.message else ""
    return f"The call was rejected{who}{message}. Do not retry it as it was."


def _plain(arguments: dict[str, Any]) -> dict[str, Any]:
    """The arguments as JSON, as recorded and shown: validated ones can hold dates and
    models (the call itself runs with those)."""
    from pydantic_core import to_jsonable_python

    return to_jsonable_python(arguments, fallback=str)


def _signature(name: str, arguments: dict[str, Any]) -> str:
    return f"{name}:{json.dumps(arguments, sort_keys=True, default=str)}"


def _jsonable(value: Any, limit: int) -> Any:
    """The tool's result as JSON, a text longer than `limit` cut with a note."""
    from pydantic_core import to_jsonable_python

    data = to_jsonable_python(value, fallback=str)
    text = data if isinstance(data, str) else json.dumps(data)
    if len(text) <= limit:
        return data
    return text[:limit] + f"\n[result cut at {limit:,} of {len(text):,} characters]"


def _preview(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if len(text) > EVENT_PREVIEW_CHARS:
        text = text[:EVENT_PREVIEW_CHARS] + "…"
    return _redacted(text)


def _redacted(text: str) -> str:
    return _REDACTOR.redact(text)
