"""Another agent of the file as a tool: delegation.

The tool takes a task, runs the other agent on it (with all its policies: budget, cache,
rate limit, its own tools) as a child call keyed `<step>><call id>`, and returns its output
with the usage and cost of its requests. Its text streams live as `tool_output` events of
the calling step; a child loop records its own calls under the child key, so a crash in the
middle of a delegation resumes the child where it was. A provider failure or a budget
refusal of the child ends the calling step's attempt (a transient one is retried, replaying
the child); its other errors go to the calling model like any tool's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agentmill.agents.base import StepRequest
from agentmill.agents.tools.context import ToolOutcome, current_call

if TYPE_CHECKING:
    from pydantic_ai.toolsets import FunctionToolset

    from agentmill.agents.base import Agent

__all__ = ["delegate_toolset"]


def delegate_toolset(name: str, *, agent: Agent, description: str) -> FunctionToolset[Any]:
    """A toolset with one tool, `name`, that hands a task to `agent`."""
    from pydantic_ai.toolsets import FunctionToolset

    async def delegate(task: str) -> ToolOutcome:
        """Hand a task to the agent and get its answer.

        Args:
            task: Everything the agent needs to know to do the task: it sees nothing else.
        """
        call = current_call()
        assert call is not None, "a delegation runs inside the durable loop"
        request = StepRequest(
            run_id=call.run_id,
            step_id=f"{call.step}>{call.call_id}",
            prompt=task,
            attempt=call.attempt,
        )
        result = await agent.run(request, _Streamed(call.stream))
        return ToolOutcome(
            value=result.output, usage=result.usage, cost_usd=result.cost_usd, model=result.model
        )

    toolset: FunctionToolset[Any] = FunctionToolset(id=f"agent:{name}")
    toolset.add_function(
        delegate,
        name=name,
        description=description,
    )
    return toolset


class _Streamed:
    """The child's context: its text goes to the calling step's stream."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    async def emit_text(self, text: str) -> None:
        if self._stream is not None:
            await self._stream(text)
