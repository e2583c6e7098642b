"""The durable agent loop through the engine: multi-turn tool calls, parallel calls, tool
errors, guards, delegation, and what is recorded and streamed."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel

from agentmill.agents.models import override_models
from agentmill.engine.engine import Engine
from agentmill.spec.loader import load_project_text
from agentmill.store import CallStatus, EventRecord, RunRecord, RunStatus

TOOLS_MODULE = '''
import json
from pathlib import Path

from agentmill.agents.tools.context import current_call

LOG = Path(__file__).with_name("calls.jsonl")


def add(a: int, b: int) -> int:
    """Add two numbers."""
    call = current_call()
    with LOG.open("a") as log:
        log.write(json.dumps({"a": a, "b": b, "key": call.idempotency_key}) + "\\n")
    return a + b


def broken(text: str) -> str:
    """Always fails."""
    raise ValueError(f"cannot handle {text!r}")
'''

CONFIG = """
version: 1
agents:
  worker:
    model: openai:gpt-4o
    instructions: Use the tools.
    tools:
      - function: {module}:add
      - function: {module}:broken
    max_tool_calls: {max_tool_calls}
    max_turns: {max_turns}
workflows:
  w:
    steps:
      - {{id: work, agent: worker, prompt: "add things"}}
"""

Script = Callable[[list[ModelMessage], AgentInfo], ModelResponse]


def turns(messages: list[ModelMessage]) -> int:
    return sum(isinstance(m, ModelResponse) for m in messages)


def tool_returns(messages: list[ModelMessage]) -> list[Any]:
    return [
        part.content
        for m in messages
        if isinstance(m, ModelRequest)
        for part in m.parts
        if isinstance(part, ToolReturnPart) and part.outcome != "retried"
    ]


def retry_prompts(messages: list[ModelMessage]) -> list[str]:
    """What the model was told about its failed tool calls."""
    return [
        str(part.content)
        for m in messages
        if isinstance(m, ModelRequest)
        for part in m.parts
        if isinstance(part, ToolReturnPart) and part.outcome == "retried"
    ]


async def run_tools(
    engine: Engine,
    tmp_path: Path,
    script: Script,
    *,
    max_tool_calls: int = 50,
    max_turns: int = 20,
) -> tuple[RunRecord, list[EventRecord]]:
    # A module name of the test's own: Python keeps an imported module for the process.
    module = f"project_tools_{uuid.uuid4().hex}"
    (tmp_path / f"{module}.py").write_text(TOOLS_MODULE)
    config = tmp_path / "agentmill.yaml"
    text = CONFIG.format(module=module, max_tool_calls=max_tool_calls, max_turns=max_turns)
    config.write_text(text)
    loaded = load_project_text(config.read_text(), str(config))
    model = FunctionModel(script)
    with override_models(lambda _label: model):
        run = await engine.submit(loaded.spec, "w", {}, config_path=str(config))
        events = [event async for event in engine.follow(run.id)]
    return await engine.store.get_run(run.id), events


def executed(tmp_path: Path) -> list[dict[str, Any]]:
    log = tmp_path / "calls.jsonl"
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


async def test_a_multi_turn_loop_records_every_request_and_call(
    engine: Engine, tmp_path: Path
) -> None:
    def script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        n = turns(messages)
        if n < 3:
            call = ToolCallPart("add", {"a": n, "b": 10}, tool_call_id=f"call-{n}")
            return ModelResponse(parts=[TextPart(f"adding {n}"), call])
        return ModelResponse(parts=[TextPart(f"sums: {tool_returns(messages)}")])

    run, events = await run_tools(engine, tmp_path, script)

    assert run.status is RunStatus.SUCCEEDED, run.error
    assert run.outputs == {"work": "sums: [10, 11, 12]"}
    calls = await engine.store.calls(run.id, "work")
    assert [(c.call_id, c.kind, c.status) for c in calls] == [
        ("m1", "model", CallStatus.SUCCEEDED),
        ("t1.1", "tool", CallStatus.SUCCEEDED),
        ("m2", "model", CallStatus.SUCCEEDED),
        ("t2.1", "tool", CallStatus.SUCCEEDED),
        ("m3", "model", CallStatus.SUCCEEDED),
        ("t3.1", "tool", CallStatus.SUCCEEDED),
        ("m4", "model", CallStatus.SUCCEEDED),
    ]
    assert [c.result for c in calls if c.kind == "tool"] == [10, 11, 12]
    assert next(c.arguments for c in calls if c.kind == "tool") == {"a": 0, "b": 10}
    keys = [entry["key"] for entry in executed(tmp_path)]
    assert keys == [f"{run.id}/work/t1.1", f"{run.id}/work/t2.1", f"{run.id}/work/t3.1"]
    step = {s.key: s for s in await engine.store.steps(run.id)}["work"]
    assert step.usage is not None
    assert step.usage["requests"] == 4
    assert step.details == {"turns": 4, "tool_calls": 3}
    tool_events = [e for e in events if e.kind in {"step_tool_call", "step_tool_result"}]
    assert [(e.kind, e.data["call"]) for e in tool_events] == [
        ("step_tool_call", "t1.1"),
        ("step_tool_result", "t1.1"),
        ("step_tool_call", "t2.1"),
        ("step_tool_result", "t2.1"),
        ("step_tool_call", "t3.1"),
        ("step_tool_result", "t3.1"),
    ]
    assert tool_events[0].data["name"] == "add"
    assert json.loads(tool_events[0].data["args"]) == {"a": 0, "b": 10}
    assert tool_events[1].data["size"] == 2
    assert "error" not in tool_events[1].data
    text = "".join(e.data["text"] for e in events if e.kind == "step_output")
    assert text.startswith("adding 0adding 1adding 2")


async def test_parallel_tool_calls_of_one_response_each_run_once(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    def script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if turns(messages) == 0:
            return ModelResponse(
                parts=[
                    ToolCallPart("add", {"a": 1, "b": 1}, tool_call_id="x"),
                    ToolCallPart("add", {"a": 2, "b": 2}, tool_call_id="y"),
                ]
            )
        return ModelResponse(parts=[TextPart(f"{sorted(tool_returns(messages))}")])

    run, _ = await run_tools(sqlite_engine, tmp_path, script)

    assert run.outputs == {"work": "[2, 4]"}
    calls = await sqlite_engine.store.calls(run.id, "work")
    assert sorted(c.call_id for c in calls if c.kind == "tool") == ["t1.1", "t1.2"]
    assert len(executed(tmp_path)) == 2


async def test_a_tool_error_goes_back_to_the_model(sqlite_engine: Engine, tmp_path: Path) -> None:
    def script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        retries = retry_prompts(messages)
        if not retries:
            return ModelResponse(parts=[ToolCallPart("broken", {"text": "x"})])
        return ModelResponse(parts=[TextPart("the tool said: " + retries[0])])

    run, events = await run_tools(sqlite_engine, tmp_path, script)

    assert run.status is RunStatus.SUCCEEDED, run.error
    assert "ValueError: cannot handle 'x'" in run.outputs["work"]  # type: ignore[index]
    result = next(e for e in events if e.kind == "step_tool_result")
    assert result.data["error"] == "ValueError: cannot handle 'x'"
    calls = await sqlite_engine.store.calls(run.id, "work")
    assert [c.status for c in calls if c.kind == "tool"] == [CallStatus.FAILED]


async def test_a_tool_failing_past_its_retries_stops_the_step_with_the_reason(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    def script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return ModelResponse(parts=[ToolCallPart("broken", {"text": str(turns(messages))})])

    run, _ = await run_tools(sqlite_engine, tmp_path, script)

    assert run.status is RunStatus.FAILED
    assert run.error is not None
    assert "broken" in run.error
    assert "retries" in run.error


async def test_max_tool_calls_tells_the_model_to_finish(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    seen_tools: list[list[str]] = []

    def script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        seen_tools.append([t.name for t in info.function_tools])
        if not info.function_tools:
            return ModelResponse(parts=[TextPart(f"done after {tool_returns(messages)}")])
        n = turns(messages)
        return ModelResponse(parts=[ToolCallPart("add", {"a": n, "b": 0})])

    run, _ = await run_tools(sqlite_engine, tmp_path, script, max_tool_calls=2)

    assert run.status is RunStatus.SUCCEEDED, run.error
    output = run.outputs["work"]  # type: ignore[index]
    assert output.startswith("done after [0, 1, 'Not run: max_tool_calls (2) reached")
    assert len(executed(tmp_path)) == 2
    assert seen_tools[-1] == []
    step = {s.key: s for s in await sqlite_engine.store.steps(run.id)}["work"]
    assert step.details is not None
    assert step.details["stopped"] == "max_tool_calls (2) reached"


async def test_the_same_call_repeated_is_stopped(sqlite_engine: Engine, tmp_path: Path) -> None:
    def script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if not info.function_tools:
            return ModelResponse(parts=[TextPart("giving up")])
        return ModelResponse(parts=[ToolCallPart("add", {"a": 1, "b": 1})])

    run, _ = await run_tools(sqlite_engine, tmp_path, script)

    assert run.status is RunStatus.SUCCEEDED, run.error
    assert run.outputs == {"work": "giving up"}
    assert len(executed(tmp_path)) == 2
    step = {s.key: s for s in await sqlite_engine.store.steps(run.id)}["work"]
    assert step.details is not None
    assert "the same call (add with the same arguments)" in step.details["stopped"]


async def test_a_model_that_keeps_calling_tools_after_the_last_turn_fails_the_step(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    def script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        n = turns(messages)
        return ModelResponse(parts=[ToolCallPart("add", {"a": n, "b": n})])

    run, _ = await run_tools(sqlite_engine, tmp_path, script, max_turns=3)

    assert run.status is RunStatus.FAILED
    assert run.error is not None
    assert "max_turns (3) reached" in run.error
    assert "kept calling tools" in run.error


@pytest.mark.parametrize("turn_limit", [1])
async def test_the_last_turn_offers_no_tools(
    sqlite_engine: Engine, tmp_path: Path, turn_limit: int
) -> None:
    offered: list[int] = []

    def script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        offered.append(len(info.function_tools))
        return ModelResponse(parts=[TextPart("answer")])

    run, _ = await run_tools(sqlite_engine, tmp_path, script, max_turns=turn_limit)

    assert run.outputs == {"work": "answer"}
    assert offered == [0]


STRUCTURED = """
version: 1
agents:
  grader:
    model: openai:gpt-4o
    tools: [{{function: {module}:add}}]
    output:
      type: object
      properties: {{total: {{type: integer}}}}
      required: [total]
workflows:
  w:
    steps:
      - {{id: grade, agent: grader, prompt: "add and report"}}
"""


async def test_a_structured_output_after_tool_calls(sqlite_engine: Engine, tmp_path: Path) -> None:
    module = f"project_tools_{uuid.uuid4().hex}"
    (tmp_path / f"{module}.py").write_text(TOOLS_MODULE)
    config = tmp_path / "agentmill.yaml"
    config.write_text(STRUCTURED.format(module=module))

    def script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if turns(messages) == 0:
            return ModelResponse(parts=[ToolCallPart("add", {"a": 2, "b": 3})])
        (output_tool,) = info.output_tools
        total = tool_returns(messages)[0]
        return ModelResponse(parts=[ToolCallPart(output_tool.name, {"total": total})])

    loaded = load_project_text(config.read_text(), str(config))
    model = FunctionModel(script)
    with override_models(lambda _label: model):
        run = await sqlite_engine.submit(loaded.spec, "w", {}, config_path=str(config))
        [_ async for _ in sqlite_engine.follow(run.id)]
    run = await sqlite_engine.store.get_run(run.id)

    assert run.status is RunStatus.SUCCEEDED, run.error
    assert run.outputs == {"grade": {"total": 5}}


def test_the_canonical_text_of_a_growing_history_is_the_same_with_a_memo() -> None:
    from pydantic_ai.messages import UserPromptPart
    from pydantic_ai.models import ModelRequestParameters

    from agentmill.agents.base import ModelTurn
    from agentmill.agents.llm import CanonicalMemo, canonical_text

    history: list[ModelMessage] = [ModelRequest(parts=[UserPromptPart("go")])]
    memo = CanonicalMemo()
    parameters = ModelRequestParameters()
    for n in range(3):
        turn = ModelTurn(number=n + 1, messages=list(history), parameters=parameters)
        with_memo = canonical_text(turn, memo)
        assert with_memo == canonical_text(turn)
        assert json.loads(with_memo)["messages"][0]["parts"][0]["content"] == "go"
        history.append(ModelResponse(parts=[ToolCallPart("add", {"a": n, "b": 1})]))
        history.append(ModelRequest(parts=[UserPromptPart(f"result {n}")]))
    # A history that changed in the middle is written again from there.
    history[1] = ModelResponse(parts=[TextPart("changed")])
    turn = ModelTurn(number=4, messages=list(history), parameters=parameters)
    assert canonical_text(turn, memo) == canonical_text(turn)
    assert "changed" in canonical_text(turn, memo)
