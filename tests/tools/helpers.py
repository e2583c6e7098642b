"""Calling one tool the way a model does: a pydantic-ai `Agent` driven by a `FunctionModel`
that makes the call, then answers with what the tool returned (or the retry it asked for)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic_ai import Agent
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.toolsets import AbstractToolset

__all__ = ["Outcome", "call_tool"]


@dataclass(frozen=True)
class Outcome:
    """What the model saw: the tool's return, or the retry prompt of a refusal."""

    kind: Literal["return", "retry"]
    text: str
    """The return, or the retry's message (what the tool said, before pydantic-ai's wrapping)."""


async def call_tool(toolset: AbstractToolset[Any], name: str, **args: Any) -> Outcome:
    """Run an agent whose model calls `name` once with `args`, then reports what it saw."""

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if len(messages) == 1:
            return ModelResponse(parts=[ToolCallPart(name, args, tool_call_id="call-1")])
        last = messages[-1]
        assert isinstance(last, ModelRequest)
        return ModelResponse(parts=[TextPart(json.dumps(_seen(last)))])

    agent = Agent(FunctionModel(model), toolsets=[toolset], retries=3)
    result = await agent.run("go")
    seen = json.loads(result.output)
    return Outcome(kind=seen["kind"], text=seen["text"])


def _seen(request: ModelRequest) -> dict[str, str]:
    for part in request.parts:
        if isinstance(part, ToolReturnPart):
            kind = "return" if part.outcome == "success" else "retry"
            return {"kind": kind, "text": part.model_response_str(wrap_if_error=False)}
    raise AssertionError(f"no tool result in {request.parts!r}")
