"""The durable agent loop: a model that calls tools, every request and call recorded.

The loop is pydantic-ai's own `Agent` run, with two wrappers that make it durable the way
pydantic-ai's durable-execution integrations do (`pydantic_ai._durable_replay`): the run
starts again from the prompt on every attempt of the step, and each unit that already
finished returns its recorded result instead of running.

- `_turn_model` replaces the model: the n-th request of the step is `m<n>`. A recorded one
  returns its recorded response; a new one goes through the agent's policy chain (guard,
  cache, fallback, breaker, budget, rate limit) as one call, and is committed before the
  loop goes on, so no finished request is paid for twice.
- `recorded_toolset` (`agents/tools/recorded.py`) wraps the tools: the k-th tool call of
  turn n is `t<n>.<k>`; a finished one returns its recorded result; an interrupted one runs
  again with the same idempotency key.

Responses are recorded before their tool calls run and replay in the same order, so the
same ids name the same calls on every attempt.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from agentmill.agents.base import (
    Agent,
    DurableContext,
    ModelTurn,
    StepContext,
    StepRequest,
    StepResult,
    Usage,
    as_durable,
)
from agentmill.agents.llm import CanonicalMemo, canonical_text
from agentmill.errors import AgentmillError, LoopStopped
from agentmill.store.records import CallRecord, CallStatus

if TYPE_CHECKING:
    from pydantic_ai.messages import ModelMessage, ModelResponse
    from pydantic_ai.models import Model, ModelRequestParameters
    from pydantic_ai.settings import ModelSettings
    from pydantic_ai.tools import ToolDefinition
    from pydantic_ai.toolsets import AbstractToolset

    from agentmill.agents.tools.recorded import ToolApprovals

__all__ = ["CallLog", "LoopLimits", "ToolLoop", "Workspace"]

Workspace = Path | Callable[[StepRequest], Awaitable[Path]] | None
"""Where the step's built-in tools work: a directory, or one opened per step call (a git
worktree), or none."""

FINISH_TURNS = 2
"""Model requests a loop told to finish still gets (one to answer, one to recover from
calling a tool that is no longer offered) before the step is stopped."""


class CallLog(Protocol):
    """Where the loop records its calls: the step's records, queued, then committed."""

    async def recorded(self, run_id: str, step: str) -> list[CallRecord]: ...

    def put(self, record: CallRecord) -> None: ...

    async def commit(self) -> None: ...


@dataclass(frozen=True, kw_only=True)
class LoopLimits:
    """The guards of one step's loop."""

    max_turns: int = 20
    max_tool_calls: int = 50
    max_repeats: int = 3
    """The same tool called with the same arguments this many times: the loop is stuck."""
    max_failures_in_a_row: int = 5
    """Tool calls failing one after another: no progress."""
    tool_retries: int = 2
    """Errors a tool may return to the model in a row before the step fails."""
    max_result_chars: int = 100_000
    """A tool result longer than this is cut, with a note the model sees."""


@dataclass(kw_only=True)
class LoopState:
    """What one attempt of a step's loop has done so far (replayed calls included)."""

    request: StepRequest
    context: DurableContext
    recorded: dict[str, CallRecord]
    turn: int = 0
    tool_calls: int = 0
    usage: Usage = field(default_factory=Usage)
    cost_usd: float | None = 0.0
    finish_reason: str | None = None
    """Set when a guard told the model to finish: why."""
    finish_turn: int | None = None
    call_ids: dict[str, str] = field(default_factory=dict)
    """The current turn's tool call ids (from the model) -> call ids (`t<turn>.<k>`)."""
    memo: CanonicalMemo = field(default_factory=CanonicalMemo)
    """The canonical text of the conversation's messages written so far."""
    reason: str = ""
    """The text the model wrote with its tool calls (shown to approvers)."""
    policies: dict[str, Any] = field(default_factory=dict)
    """What the policies did to the step's requests, for the step's details (as a step
    without tools records it): rate-limit waits, fallbacks, guard flags, cache hits."""

    @property
    def step(self) -> str:
        return self.request.step_key

    def finish(self, reason: str, *, last_with_tools: int | None = None) -> None:
        """Tell the model to answer without tools from its next request on (or after
        request `last_with_tools`, the last one that offered them)."""
        if self.finish_reason is None:
            self.finish_reason = reason
            self.finish_turn = self.turn if last_with_tools is None else last_with_tools

    def account(self, usage: dict[str, Any] | None, cost: float | None) -> None:
        self.usage = self.usage + Usage.from_json(usage or {})
        self.cost_usd = None if cost is None or self.cost_usd is None else self.cost_usd + cost

    def note_policies(self, details: dict[str, Any] | None) -> None:
        """Add what the policies did to one model request to the step's totals."""
        details = details or {}
        found = self.policies
        if details.get("rate_limit_wait"):
            wait = found.get("rate_limit_wait", 0.0) + details["rate_limit_wait"]
            found["rate_limit_wait"] = round(wait, 3)
        if details.get("fallback"):
            found["fallback"] = [*found.get("fallback", []), *details["fallback"]]
        flagged = (details.get("guard") or {}).get("flagged")
        if flagged:
            known = found.setdefault("guard", {"flagged": []})["flagged"]
            known.extend(flag for flag in flagged if flag not in known)
        if details.get("cached"):
            found["cached_requests"] = found.get("cached_requests", 0) + 1


class ToolLoop(Agent):
    """An LLM agent with tools: the durable loop around its policy-wrapped model."""

    def __init__(
        self,
        *,
        model_agent: Agent,
        model: Model,
        label: str,
        toolsets: Sequence[AbstractToolset[Any]],
        log: CallLog,
        instructions: str = "",
        output_schema: dict[str, Any] | None = None,
        limits: LoopLimits | None = None,
        approvals: ToolApprovals | None = None,
        needs_approval: Callable[[ToolDefinition], bool] | None = None,
        workspace: Workspace = None,
    ) -> None:
        self._model_agent = model_agent
        self._model = model
        self.label = label
        self._toolsets = list(toolsets)
        self._log = log
        self._instructions = instructions
        self._output_schema = output_schema
        self.limits = limits or LoopLimits()
        self._approvals = approvals
        self._needs_approval = needs_approval or _approval_metadata
        self._workspace = workspace

    async def run(self, request: StepRequest, context: StepContext) -> StepResult:
        from pydantic_ai import Agent as PydanticAgent
        from pydantic_ai.exceptions import UnexpectedModelBehavior
        from pydantic_ai.usage import UsageLimits

        from agentmill.agents.tools.recorded import recorded_toolset

        records = await self._log.recorded(request.run_id, request.step_key)
        workspace = self._workspace
        if callable(workspace):
            workspace = await workspace(request)
        state = LoopState(
            request=request,
            context=as_durable(context),
            recorded={record.call_id: record for record in records},
        )
        toolset = recorded_toolset(
            _combined(self._toolsets),
            state=state,
            log=self._log,
            limits=self.limits,
            approvals=self._approvals,
            needs_approval=self._needs_approval,
            workspace=workspace,
        )
        agent = PydanticAgent(
            _turn_model(self._model, state=state, loop=self),
            output_type=_output_type(self._output_schema),
            instructions=self._instructions or None,
            toolsets=[toolset],
            retries=self.limits.tool_retries,
        )
        limits = UsageLimits(request_limit=None, tool_calls_limit=None)
        try:
            result = await agent.run(request.prompt, usage_limits=limits)
        except UnexpectedModelBehavior as exc:
            _note_spent(state, self.label)
            # pydantic-ai's advice (raise the retry limit) names a setting of its own.
            reason = exc.message.split(". Consider")[0]
            raise LoopStopped(f"step '{state.step}' stopped: {reason}") from None
        except Exception:
            _note_spent(state, self.label)
            raise
        return StepResult(
            output=result.output,
            model=self.label,
            usage=state.usage,
            cost_usd=state.cost_usd,
            details=_details(state),
        )

    async def model_turn(
        self,
        state: LoopState,
        messages: list[ModelMessage],
        settings: ModelSettings | None,
        parameters: ModelRequestParameters,
    ) -> ModelResponse:
        """The next model request of the step: recorded, or made through the policy chain."""
        state.turn += 1
        if state.turn >= self.limits.max_turns:
            # Decided here, not only for a new request: a replayed attempt hides the tools
            # from the same request on as the first one did.
            last = self.limits.max_turns - 1
            state.finish(f"max_turns ({self.limits.max_turns}) reached", last_with_tools=last)
        call_id = f"m{state.turn}"
        record = state.recorded.get(call_id)
        if record is not None and record.status is CallStatus.SUCCEEDED:
            state.account(record.usage, record.cost_usd)
            state.note_policies(record.details)
            response = _response(record.result)
            await _replay_text(state, response)
        else:
            response = await self._request(state, call_id, messages, settings, parameters)
        _note_tool_calls(state, response)
        return response

    async def _request(
        self,
        state: LoopState,
        call_id: str,
        messages: list[ModelMessage],
        settings: ModelSettings | None,
        parameters: ModelRequestParameters,
    ) -> ModelResponse:
        self._check_turns(state)
        if state.finish_reason is not None:
            messages, parameters = _finishing(messages, parameters, state.finish_reason)
        turn = ModelTurn(
            number=state.turn, messages=messages, parameters=parameters, settings=settings
        )
        request = replace(state.request, turn=turn, prompt=canonical_text(turn, state.memo))
        started = time.time()
        record = CallRecord(
            run_id=state.request.run_id,
            step=state.step,
            call_id=call_id,
            kind="model",
            name=self.label,
            status=CallStatus.RUNNING,
            attempt=state.request.attempt,
            started_at=started,
        )
        self._log.put(record)
        try:
            result = await self._model_agent.run(request, state.context)
        except Exception as exc:
            self._log.put(_failed(record, exc))  # committed with the attempt's failure
            raise
        usage = result.usage.to_json()
        self._log.put(
            replace(
                record,
                name=result.model,
                status=CallStatus.SUCCEEDED,
                result=result.output,
                usage=usage,
                cost_usd=result.cost_usd,
                finished_at=time.time(),
                details=result.details or None,
            )
        )
        await self._log.commit()
        state.account(usage, result.cost_usd)
        state.note_policies(result.details)
        response = _response(result.output)
        if result.details.get("cached"):
            await _replay_text(state, response)  # a cache hit streams nothing by itself
        return response

    def _check_turns(self, state: LoopState) -> None:
        """Stop a step whose model did not finish when told to."""
        if state.finish_turn is not None and state.turn > state.finish_turn + FINISH_TURNS:
            raise LoopStopped(
                f"step '{state.step}' stopped: {state.finish_reason}, and the model kept"
                " calling tools after it was told to answer"
            )


def _turn_model(wrapped: Model, *, state: LoopState, loop: ToolLoop) -> Model:
    """The model pydantic-ai's agent sees: every request goes to the loop (`model_turn`),
    which replays it from the records or makes it through the policy chain."""
    from pydantic_ai.models.wrapper import WrapperModel

    class TurnModel(WrapperModel):
        async def request(
            self,
            messages: list[ModelMessage],
            model_settings: ModelSettings | None,
            model_request_parameters: ModelRequestParameters,
        ) -> ModelResponse:
            return await loop.model_turn(state, messages, model_settings, model_request_parameters)

    return TurnModel(wrapped)


def _failed(record: CallRecord, error: Exception) -> CallRecord:
    """A model request the policies refused or the provider failed; the next attempt makes
    it again. An unexpected error is named by its type only (the step's error has its id)."""
    shown = str(error) if isinstance(error, AgentmillError) else type(error).__name__
    return replace(record, status=CallStatus.FAILED, error=shown, finished_at=time.time())


def _approval_metadata(tool_def: ToolDefinition) -> bool:
    from agentmill.agents.tools.toolsets import needs_approval

    return needs_approval(tool_def)


def _combined(toolsets: list[AbstractToolset[Any]]) -> AbstractToolset[Any]:
    from pydantic_ai.toolsets import CombinedToolset

    return toolsets[0] if len(toolsets) == 1 else CombinedToolset(toolsets)


def _output_type(schema: dict[str, Any] | None) -> Any:
    if schema is None:
        return str
    from pydantic_ai.output import StructuredDict

    # Validated: an output that does not fit goes back to the model (not checked by default).
    return StructuredDict(schema, validate=True)


def _response(data: Any) -> ModelResponse:
    from pydantic_ai.messages import ModelMessagesTypeAdapter, ModelResponse

    message = ModelMessagesTypeAdapter.validate_python([data])[0]
    assert isinstance(message, ModelResponse)
    return message


async def _replay_text(state: LoopState, response: ModelResponse) -> None:
    """Stream a recorded response's text again: clients drop the output of the attempt
    this one supersedes, so the new attempt shows the whole conversation."""
    if response.text:
        await state.context.emit_text(response.text)


def _note_tool_calls(state: LoopState, response: ModelResponse) -> None:
    calls = response.tool_calls
    state.call_ids = {
        call.tool_call_id: f"t{state.turn}.{index}" for index, call in enumerate(calls, 1)
    }
    state.reason = response.text or ""


def _finishing(
    messages: list[ModelMessage], parameters: ModelRequestParameters, reason: str
) -> tuple[list[ModelMessage], ModelRequestParameters]:
    """The request without tools, with a note telling the model to answer now."""
    from pydantic_ai.messages import ModelRequest, UserPromptPart

    note = UserPromptPart(
        f"Stop calling tools ({reason}). Answer now with what you have found so far."
    )
    last = messages[-1]
    if isinstance(last, ModelRequest):
        sent = [*messages[:-1], replace(last, parts=[*last.parts, note])]
    else:
        sent = [*messages, ModelRequest(parts=[note])]
    return sent, replace(parameters, function_tools=[])


def _note_spent(state: LoopState, label: str) -> None:
    """A failing attempt still paid for the requests it finished: noted, so the failed
    step records (and costs count) them."""
    if state.usage.requests:
        spent = {"model": label, "usage": state.usage.to_json(), "cost_usd": state.cost_usd}
        state.context.note(spent=spent)


def _details(state: LoopState) -> dict[str, Any]:
    details: dict[str, Any] = {
        **state.policies,
        "turns": state.turn,
        "tool_calls": state.tool_calls,
    }
    if state.finish_reason is not None:
        details["stopped"] = state.finish_reason
    return details
