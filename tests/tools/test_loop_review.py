"""An outside review of the durable tool loop: what a resumed attempt replays, what a
cancelled or timed-out step leaves behind. Real engine (SQLite), scripted models, a real
stdio MCP server."""

from __future__ import annotations

from pathlib import Path

from pydantic_ai.exceptions import ModelHTTPError
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo

from agentmill.engine.engine import Engine
from agentmill.store import RunStatus
from tests.tools.loop_project import Scripted, executed, run_project, turns

MODEL = "openai:gpt-4o"


def project(*, agent: str = "", top: str = "", step: str = "", tools: str = "") -> str:
    """Workflow `w`, one step `work` running agent `worker` with the test tools."""
    return f"""
version: 1
models: {{default: {MODEL}}}
{top}
agents:
  worker:
    instructions: Use the tools.
    tools:
      - function: {{module}}:add
{tools}
{agent}
workflows:
  w:
    steps:
      - {{id: work, agent: worker, prompt: "add things"{step}}}
"""


def failing_once_at(request: int, script: Scripted) -> Scripted:
    """`script`, except that request number `request` fails once (503): the step's next
    attempt replays every request and call before it."""
    failed: list[int] = []

    def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if turns(messages) + 1 == request and not failed:
            failed.append(request)
            raise ModelHTTPError(status_code=503, model_name="gpt-4o", body="overloaded")
        return script.script(messages, info)

    return Scripted(answer)


async def test_the_last_turn_runs_no_tool_call_on_either_attempt(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    """max_turns 2: the model calls `add` at request 1, and again at request 2, where no tool
    is offered (before the fix that call ran: the tools were resolved before the request
    that hid them, and a replayed attempt offered them again after it). Request 3 fails
    once; the replay runs nothing again."""
    offered: list[int] = []

    def script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        n = turns(messages) + 1
        offered.append(len(info.function_tools))
        if n <= 2:
            return ModelResponse(parts=[ToolCallPart("add", {"a": n, "b": 10})])
        return ModelResponse(parts=[TextPart("done")])

    model = failing_once_at(3, Scripted(script))
    config = project(agent="    max_turns: 2\n    retries: 1", step=", backoff: 0.01")

    done = await run_project(sqlite_engine, tmp_path, config, {MODEL: model})

    assert done.run.status is RunStatus.SUCCEEDED, done.run.error
    assert done.steps["work"].attempt == 2
    assert offered == [1, 0, 0]  # the failed request 3 never reached the script
    assert [e["a"] for e in executed(tmp_path)] == [1]
    assert [c.call_id for c in done.calls if c.kind == "tool"] == ["t1.1"]
    assert done.steps["work"].details is not None
    assert done.steps["work"].details["stopped"] == "max_turns (2) reached"
