"""LLM agents through pydantic-ai.

Plain text steps call the model directly (`model_request_stream`), which is far cheaper per
call than `pydantic_ai.Agent`; steps with a structured output schema go through `Agent`,
which validates the output and asks the model again when it does not fit.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any, cast

from agentmill.agents.base import (
    Agent,
    ModelTurn,
    StepContext,
    StepRequest,
    StepResult,
    Usage,
    estimate_input_tokens,
    estimate_tokens,
)
from agentmill.agents.errors import map_provider_errors
from agentmill.agents.pricing import cost_usd
from agentmill.spec.models import ModelPrice

if TYPE_CHECKING:
    from pydantic_ai.models import Model
    from pydantic_ai.settings import ModelSettings
    from pydantic_ai.usage import RequestUsage, RunUsage

__all__ = ["CanonicalMemo", "LLMAgent", "canonical_text"]


class LLMAgent(Agent):
    """An agent backed by a pydantic-ai model."""

    def __init__(
        self,
        *,
        model: Model,
        label: str,
        instructions: str = "",
        max_tokens: int | None = None,
        temperature: float | None = None,
        output_schema: dict[str, Any] | None = None,
        price: ModelPrice | None = None,
    ) -> None:
        self._model = model
        self.label = label
        """`provider:name[@url]`, as shown in results and used for prices and limits."""
        self.instructions = instructions
        self.max_tokens = max_tokens
        self.price = price
        self._settings = _model_settings(max_tokens, temperature)
        self._output_schema = output_schema

    @property
    def model(self) -> Model:
        """The pydantic-ai model this agent calls."""
        return self._model

    def identity(self) -> dict[str, Any]:
        """Everything besides the prompt that decides the response (for cache keys)."""
        return {
            "model": self.label,
            "instructions": self.instructions,
            "settings": dict(self._settings),
            "output_schema": self._output_schema,
        }

    async def run(self, request: StepRequest, context: StepContext) -> StepResult:
        with map_provider_errors(self.label):
            if request.turn is not None:
                result = await self._run_turn(request.turn, context)
            elif self._output_schema is not None:
                result = await self._run_structured(request.prompt)
            else:
                result = await self._run_text(request.prompt, context)
        return replace(result, cost_usd=cost_usd(self.label, result.usage, self.price))

    async def _run_text(self, prompt: str, context: StepContext) -> StepResult:
        from pydantic_ai.direct import model_request_stream
        from pydantic_ai.messages import ModelRequest

        message = ModelRequest.user_text_prompt(prompt, instructions=self.instructions or None)
        chunks = 0
        async with model_request_stream(
            self._model, [message], model_settings=self._settings
        ) as stream:
            async for text in _text_deltas(stream):
                chunks += 1
                await context.emit_text(text)
            response = stream.get()
        output = response.text or ""
        usage = _usage(response.usage, requests=1)
        if usage.estimated:
            usage = _estimate(usage, sent=[self.instructions, prompt], received=output)
            usage.output_tokens = max(usage.output_tokens, chunks)
        return StepResult(output=output, model=self.label, usage=usage)

    async def _run_turn(self, turn: ModelTurn, context: StepContext) -> StepResult:
        """One model request of an agent loop, streamed; the output is the response in
        pydantic-ai's JSON form (what the loop records and the cache stores)."""
        from pydantic_ai.direct import model_request, model_request_stream
        from pydantic_ai.messages import ModelMessagesTypeAdapter
        from pydantic_ai.settings import merge_model_settings

        settings = merge_model_settings(self._settings, turn.settings)
        chunks = 0
        if not _streams(self._model):
            response = await model_request(
                self._model,
                turn.messages,
                model_settings=settings,
                model_request_parameters=turn.parameters,
            )
            if response.text:
                chunks = 1
                await context.emit_text(response.text)
        else:
            async with model_request_stream(
                self._model,
                turn.messages,
                model_settings=settings,
                model_request_parameters=turn.parameters,
            ) as stream:
                async for text in _text_deltas(stream):
                    chunks += 1
                    await context.emit_text(text)
                response = stream.get()
        usage = _usage(response.usage, requests=1)
        if usage.estimated:
            sent = [self.instructions, canonical_text(turn)]
            usage = _estimate(usage, sent=sent, received=json.dumps(_parts_json(response)))
            usage.output_tokens = max(usage.output_tokens, chunks)
        output = ModelMessagesTypeAdapter.dump_python([response], mode="json")[0]
        return StepResult(output=output, model=self.label, usage=usage)

    async def _run_structured(self, prompt: str) -> StepResult:
        from pydantic_ai import Agent as PydanticAgent
        from pydantic_ai.output import StructuredDict

        assert self._output_schema is not None
        agent = PydanticAgent(
            self._model,
            output_type=StructuredDict(self._output_schema, validate=True),
            instructions=self.instructions or None,
            model_settings=self._settings,
        )
        result = await agent.run(prompt)
        usage = _usage(result.usage, requests=result.usage.requests)
        if usage.estimated:
            sent = [self.instructions, prompt, json.dumps(self._output_schema)]
            usage = _estimate(usage, sent=sent, received=json.dumps(result.output))
        return StepResult(output=result.output, model=self.label, usage=usage)


async def _text_deltas(stream: Any) -> AsyncIterator[str]:
    """The text a streamed response writes, chunk by chunk (tool calls are not text)."""
    from pydantic_ai.messages import PartDeltaEvent, PartStartEvent, TextPart, TextPartDelta

    async for event in stream:
        if isinstance(event, PartStartEvent) and isinstance(event.part, TextPart):
            text = event.part.content
        elif isinstance(event, PartDeltaEvent) and isinstance(event.delta, TextPartDelta):
            text = event.delta.content_delta
        else:
            continue
        if text:
            yield text


def _streams(model: Model) -> bool:
    """Whether the model can stream: a test's `FunctionModel` may script whole responses
    only (its `function`, no `stream_function`)."""
    from pydantic_ai.models.function import FunctionModel

    return not (isinstance(model, FunctionModel) and model.stream_function is None)


def canonical_text(turn: ModelTurn, memo: CanonicalMemo | None = None) -> str:
    """A model request as canonical JSON text: what it sends (messages, tools, output
    mode) without timestamps or ids that differ between identical requests. The cache keys
    on it; budgets, rate limits and the prompt size guard measure it. An agent loop passes
    its `memo`, so each message of its growing history is written once, not once per turn."""
    texts = (memo or CanonicalMemo()).texts(turn.messages)
    parameters = turn.parameters
    tools = [
        {"name": t.name, "description": t.description, "parameters": t.parameters_json_schema}
        for t in [*parameters.function_tools, *parameters.output_tools]
    ]
    # The same text as json.dumps of {"messages", "output_mode", "tools"} with sorted keys.
    return (
        '{"messages":['
        + ",".join(texts)
        + '],"output_mode":'
        + _dumps(parameters.output_mode)
        + ',"tools":'
        + _dumps(tools)
        + "}"
    )


class CanonicalMemo:
    """The canonical text of messages already written. A loop's history grows by appending
    the same message objects, so a message seen at the same place is not written again."""

    def __init__(self) -> None:
        self._written: list[tuple[Any, str]] = []

    def texts(self, messages: list[Any]) -> list[str]:
        texts: list[str] = []
        for index, message in enumerate(messages):
            if index < len(self._written) and self._written[index][0] is message:
                texts.append(self._written[index][1])
                continue
            del self._written[index:]
            text = _dumps(_message_json(message))
            self._written.append((message, text))
            texts.append(text)
        return texts


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


_VOLATILE = frozenset(
    {
        "timestamp",
        "request_timestamp",
        "duration",
        "usage",
        "failed_attempts",
        "provider_response_id",
        "provider_details",
        "run_id",
        "conversation_id",
    }
)
"""Fields of a message or part that record when, how long, how much or which run, not what
is sent: two identical requests differ in them."""


def _message_json(message: Any) -> dict[str, Any]:
    """A message as JSON without its volatile fields (see `_VOLATILE`). Only the message's
    and its parts' own fields are dropped: tool arguments and tool results are content,
    kept whole even when they have keys of those names."""
    from pydantic_ai.messages import ModelMessagesTypeAdapter

    data: dict[str, Any] = ModelMessagesTypeAdapter.dump_python([message], mode="json")[0]
    kept = _without_volatile(data)
    parts = cast("list[dict[str, Any]]", data.get("parts") or [])
    kept["parts"] = [_without_volatile(part) for part in parts]
    return kept


def _without_volatile(value: dict[str, Any]) -> dict[str, Any]:
    return {key: item for key, item in value.items() if key not in _VOLATILE}


def _parts_json(response: Any) -> list[dict[str, Any]]:
    return _message_json(response).get("parts", [])


def _model_settings(max_tokens: int | None, temperature: float | None) -> ModelSettings:
    settings: ModelSettings = {}
    if max_tokens is not None:
        settings["max_tokens"] = max_tokens
    if temperature is not None:
        settings["temperature"] = temperature
    return settings


def _usage(usage: RequestUsage | RunUsage, *, requests: int) -> Usage:
    """What the provider reported; `estimated` when it omitted usage (some OpenAI-compatible
    servers do not send a usage chunk while streaming), so the counts are not to be trusted."""
    unreported = bool(usage.unmeasured_requests) or (
        usage.input_tokens == 0 and usage.output_tokens == 0
    )
    return Usage(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_read_tokens=usage.cache_read_tokens,
        requests=requests,
        estimated=unreported,
    )


def _estimate(reported: Usage, *, sent: list[str], received: str) -> Usage:
    """`reported` raised to an estimate of what the requests read and wrote: each of them
    read `sent`; together they wrote `received`. Never below what was reported."""
    tokens_in = estimate_input_tokens(*sent) * max(reported.requests, 1)
    return replace(
        reported,
        input_tokens=max(reported.input_tokens, tokens_in),
        output_tokens=max(reported.output_tokens, estimate_tokens(received)),
    )
