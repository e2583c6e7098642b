"""An outside review of the durable tool loop: what a resumed attempt replays, what a
cancelled or timed-out step leaves behind. Real engine (SQLite), scripted models, a real
stdio MCP server."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from pydantic_ai.exceptions import ModelHTTPError
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo

from agentmill.agents.models import override_models
from agentmill.engine.engine import Engine
from agentmill.engine.tool_approvals import tool_prompt
from agentmill.spec.loader import load_project_text
from agentmill.store import RunStatus
from tests.tools.loop_project import (
    Scripted,
    executed,
    run_project,
    tool_returns,
    turns,
    write_project,
)

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


SLOW_SERVER = """
import os
import pathlib
import time

from mcp.server.mcpserver import MCPServer

server = MCPServer("slow")


@server.tool()
def wait_long(seconds: int) -> str:
    \"\"\"Wait, then answer.\"\"\"
    pathlib.Path(os.environ["PIDFILE"]).write_text(str(os.getpid()))
    time.sleep(seconds)
    return "waited"


server.run()
"""


def _fresh_module(tmp_path: Path, source: str) -> str:
    """A tools module under a name of the test's own (Python keeps imported modules)."""
    name = f"review_tool_{uuid.uuid4().hex}"
    (tmp_path / f"{name}.py").write_text(source)
    return name


def _alive(pid: int) -> bool:
    """Whether `pid` is still a process of ours (a zombie counts as ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def test_a_step_timing_out_during_an_mcp_call_ends_the_server(
    sqlite_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "slow_server.py").write_text(SLOW_SERVER)
    pidfile = tmp_path / "server.pid"
    monkeypatch.setenv("PIDFILE", str(pidfile))
    top = f"mcp:\n  slow:\n    command: [{sys.executable}, slow_server.py]\n    env: [PIDFILE]"

    def script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if turns(messages) == 0:
            return ModelResponse(parts=[ToolCallPart("wait_long", {"seconds": 120})])
        return ModelResponse(parts=[TextPart("done")])

    # The step's clock runs while the server starts: on a loaded machine a Python MCP server
    # took more than 2 s to start, and the step ended before the call began. 10 s leaves the
    # start room; the call itself waits 120 s, so the timeout still lands during it.
    config = project(top=top, tools="      - mcp: slow", step=", timeout: 10s")

    done = await run_project(sqlite_engine, tmp_path, config, {MODEL: Scripted(script)})

    assert done.run.status is RunStatus.FAILED
    assert pidfile.exists(), done.run.error
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
        pytest.fail(f"the MCP server (pid {pid}) outlived the step's timeout")


BLOCKING_TOOL = '''
import pathlib
import time

HERE = pathlib.Path(__file__).parent


def block() -> str:
    """Wait for the test to let go."""
    (HERE / "started").touch()
    for _ in range(600):
        if (HERE / "release").exists():
            break
        time.sleep(0.05)
    (HERE / "returned").touch()
    return "released"
'''


async def test_a_step_timeout_ends_a_step_whose_sync_tool_blocks(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    """A sync function runs in a worker thread; without a tool `timeout` pydantic-ai shields
    that await, so the step's timeout (or a cancel) waited for the thread to return."""
    module = _fresh_module(tmp_path, BLOCKING_TOOL)

    def script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if turns(messages) == 0:
            return ModelResponse(parts=[ToolCallPart("block", {})])
        return ModelResponse(parts=[TextPart("done")])

    config = project(tools=f"      - function: {module}:block", step=", timeout: 1s")
    try:
        done = await run_project(sqlite_engine, tmp_path, config, {MODEL: Scripted(script)})

        assert (tmp_path / "started").exists()
        assert not (tmp_path / "returned").exists(), "the step waited for the tool's thread"
        assert done.run.status is RunStatus.FAILED
    finally:
        (tmp_path / "release").touch()


async def test_a_servers_last_output_reaches_the_steps_error_without_escapes(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    """A stdio server's stderr is untrusted: its terminal escapes (a title change, clearing
    the screen) must not reach the step's error, which the CLI prints."""
    crash = (
        "import sys; sys.stderr.write('bad flag\\x1b]0;pwned\\x07\\x1b[2J\\x9b31m done\\n');"
        " sys.exit(3)"
    )
    top = f"mcp:\n  broken:\n    command: [{sys.executable}, -c, {json.dumps(crash)}]"

    def script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return ModelResponse(parts=[TextPart("done")])

    config = project(top=top, tools="      - mcp: broken")

    done = await run_project(sqlite_engine, tmp_path, config, {MODEL: Scripted(script)})

    assert done.run.status is RunStatus.FAILED
    assert done.run.error is not None
    assert "MCP server 'broken'" in done.run.error
    assert "bad flag" in done.run.error
    assert "done" in done.run.error
    assert not any((ord(c) < 32 and c != "\n") or 0x7F <= ord(c) < 0xA0 for c in done.run.error)


async def test_bad_tool_calls_go_back_to_the_model_and_replay_in_line(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    """An unknown tool, arguments that are not JSON, arguments of the wrong type, an empty
    tool call id and an id used again at the next turn: retry prompts for the model, never a
    crash; the resumed attempt (request 3 fails once) runs nothing again."""

    def script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        n = turns(messages) + 1
        if n == 1:
            return ModelResponse(
                parts=[
                    ToolCallPart("no_such_tool", {}, tool_call_id="x1"),
                    ToolCallPart("add", '{"a": 1,', tool_call_id="x2"),
                    ToolCallPart("add", {"a": 1, "b": 2}, tool_call_id=""),
                ]
            )
        if n == 2:
            return ModelResponse(
                parts=[
                    ToolCallPart("add", {"a": "one", "b": 1}, tool_call_id="x1"),
                    ToolCallPart("add", {"a": 2, "b": 2}, tool_call_id="x2"),
                ]
            )
        return ModelResponse(parts=[TextPart(f"seen {len(tool_returns(messages))}")])

    model = failing_once_at(3, Scripted(script))
    config = project(agent="    retries: 1", step=", backoff: 0.01")

    done = await run_project(sqlite_engine, tmp_path, config, {MODEL: model})

    assert done.run.status is RunStatus.SUCCEEDED, done.run.error
    assert done.steps["work"].attempt == 2
    assert [e["a"] for e in executed(tmp_path)] == [1, 2]
    tools = {c.call_id: c.arguments for c in done.calls if c.kind == "tool"}
    assert tools == {"t1.3": {"a": 1, "b": 2}, "t2.2": {"a": 2, "b": 2}}
    assert done.run.outputs == {"work": "seen 5"}


EXITING_TOOL = '''
import argparse


def parse(flags: str) -> str:
    """Parse command-line flags (argparse exits on a bad one)."""
    parser = argparse.ArgumentParser(prog="parse", exit_on_error=False)
    parser.add_argument("--level", type=int)
    return str(parser.parse_args(flags.split()))
'''


async def test_a_tool_that_exits_is_a_tool_error_the_model_sees(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    """argparse calls sys.exit on flags it does not know: SystemExit is no Exception, so it
    went past the tool's error handling and ended the step (or the worker)."""
    module = _fresh_module(tmp_path, EXITING_TOOL)

    def script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if turns(messages) == 0:
            return ModelResponse(parts=[ToolCallPart("parse", {"flags": "--bogus"})])
        return ModelResponse(parts=[TextPart("handled")])

    config = project(tools=f"      - function: {module}:parse")

    done = await run_project(sqlite_engine, tmp_path, config, {MODEL: Scripted(script)})

    assert done.run.status is RunStatus.SUCCEEDED, done.run.error
    assert done.run.outputs == {"work": "handled"}
    (failed,) = [c for c in done.calls if c.kind == "tool"]
    assert failed.error is not None
    assert "SystemExit" in failed.error


async def test_identical_parallel_calls_are_counted_as_they_start(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    """Three identical calls in one response: the third is the repeat the guard stops, as
    when they come one per response. Counted when they finished, all three ran (they run
    at once) while a resumed attempt, replaying the first two, refused the third: a call
    that ran before the crash was refused after it."""

    def script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if turns(messages) == 0:
            same = [ToolCallPart("add", {"a": 1, "b": 1}, tool_call_id=f"c{i}") for i in (1, 2, 3)]
            return ModelResponse(parts=same)
        return ModelResponse(parts=[TextPart("done")])

    done = await run_project(sqlite_engine, tmp_path, project(), {MODEL: Scripted(script)})

    assert done.run.status is RunStatus.SUCCEEDED, done.run.error
    assert len(executed(tmp_path)) == 2
    third = next(c for c in done.calls if c.call_id == "t1.3")
    assert third.error is not None
    assert "the same call (add with the same arguments)" in third.error


def test_a_tool_gates_prompt_carries_no_terminal_controls() -> None:
    """`approvals list` prints the prompt: a tool name from an MCP server and the model's
    arguments must not bring escapes (JSON escapes C0 controls, not C1 or bidi overrides)."""
    prompt = tool_prompt("evil\x1b]0;pwned\x07", {"path": "a\x9b2J\u202eb", "n": "\x1b[31m"})

    assert prompt.startswith("Call evil")
    assert not any(0x80 <= ord(c) < 0xA0 or c in "\x1b\x07\u202e" for c in prompt)


async def test_an_invalid_structured_output_is_retried_and_replays_in_line(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    """The output tool's arguments fail the schema once (a retry prompt, pydantic-ai's
    output retry counter), then pass; request 3 fails once and the replay lines up."""
    output = (
        "    output:\n      type: object\n      properties: {total: {type: integer}}\n"
        "      required: [total]"
    )

    def script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        n = turns(messages) + 1
        final = info.output_tools[0].name
        if n == 1:
            return ModelResponse(parts=[ToolCallPart("add", {"a": 1, "b": 2})])
        if n == 2:
            return ModelResponse(parts=[ToolCallPart(final, {"total": "three"})])
        return ModelResponse(parts=[ToolCallPart(final, {"total": 3})])

    model = failing_once_at(3, Scripted(script))
    config = project(agent=f"{output}\n    retries: 1", step=", backoff: 0.01")

    done = await run_project(sqlite_engine, tmp_path, config, {MODEL: model})

    assert done.run.status is RunStatus.SUCCEEDED, done.run.error
    assert done.run.outputs == {"work": {"total": 3}}, done.calls[-1]
    assert done.steps["work"].attempt == 2
    assert done.run.outputs == {"work": {"total": 3}}
    assert [e["a"] for e in executed(tmp_path)] == [1]


async def test_a_structured_output_without_tools_is_validated_too(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    config = f"""
version: 1
models: {{default: {MODEL}}}
agents:
  grader:
    output:
      type: object
      properties: {{total: {{type: integer}}}}
      required: [total]
workflows:
  w:
    steps:
      - {{id: grade, agent: grader, prompt: "grade"}}
"""
    answers = iter([{"total": "three"}, {"total": 3}])

    def script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return ModelResponse(parts=[ToolCallPart(info.output_tools[0].name, next(answers))])

    done = await run_project(sqlite_engine, tmp_path, config, {MODEL: Scripted(script)})

    assert done.run.status is RunStatus.SUCCEEDED, done.run.error
    assert done.run.outputs == {"grade": {"total": 3}}


EVIL_NAMES_SERVER = """
from mcp.server.mcpserver import MCPServer

server = MCPServer("evil")


@server.tool(name="ok\\x1b]0;pwned\\x07\\x1b[2J\\u202eeman")
def named() -> str:
    \"\"\"A tool whose name carries terminal escapes.\"\"\"
    return "x"


server.run()
"""


def test_doctor_shows_a_servers_tool_names_without_escapes(tmp_path: Path) -> None:
    """`doctor` prints the names a server offers: untrusted text, cleaned before the terminal."""
    (tmp_path / "evil_server.py").write_text(EVIL_NAMES_SERVER)
    config = tmp_path / "agentmill.yaml"
    python = json.dumps(sys.executable)
    config.write_text(
        "agents:\n  a:\n    tools: [{mcp: evil}]\n"
        f"mcp:\n  evil: {{command: [{python}, evil_server.py]}}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTMILL_")}
    env |= {"AGENTMILL_HOME": str(tmp_path / ".agentmill"), "COLUMNS": "300"}

    result = subprocess.run(
        [sys.executable, "-m", "agentmill", "doctor", str(config)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert "1 tool: ok" in result.stdout, result.stdout + result.stderr
    assert not any(c in result.stdout for c in "\x1b\x07\u202e")


TYPED_TOOL = '''
import datetime

from pydantic import BaseModel


class Window(BaseModel):
    start: datetime.date
    days: int


def plan(window: Window, at: datetime.datetime) -> str:
    """Plan a window."""
    return f"{window.start.isoformat()}+{window.days} at {at.hour}"
'''


async def test_a_tool_whose_arguments_validate_to_python_objects_is_recorded(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    """Validated arguments hold dates and models, which the journal's JSON could not store:
    the step crashed instead of running the call."""
    module = _fresh_module(tmp_path, TYPED_TOOL)
    args = {"window": {"start": "2026-01-02", "days": 3}, "at": "2026-01-02T10:00:00"}

    def script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if turns(messages) == 0:
            return ModelResponse(parts=[ToolCallPart("plan", args)])
        return ModelResponse(parts=[TextPart(f"{tool_returns(messages)}")])

    config = project(tools=f"      - function: {module}:plan")

    done = await run_project(sqlite_engine, tmp_path, config, {MODEL: Scripted(script)})

    assert done.run.status is RunStatus.SUCCEEDED, done.run.error
    assert done.run.outputs == {"work": "['2026-01-02+3 at 10']"}
    (call,) = [c for c in done.calls if c.kind == "tool"]
    assert call.arguments == args


async def test_a_function_tools_timeout_is_a_tool_error_the_model_sees(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    module = _fresh_module(tmp_path, BLOCKING_TOOL)

    def script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if turns(messages) == 0:
            return ModelResponse(parts=[ToolCallPart("block", {})])
        return ModelResponse(parts=[TextPart("moved on")])

    tools = f"      - {{function: '{module}:block', timeout: 500ms}}"
    try:
        done = await run_project(
            sqlite_engine, tmp_path, project(tools=tools), {MODEL: Scripted(script)}
        )

        assert done.run.status is RunStatus.SUCCEEDED, done.run.error
        assert done.run.outputs == {"work": "moved on"}
        (call,) = [c for c in done.calls if c.call_id == "t1.1"]
        assert call.error is not None
        assert "Timed out" in call.error
    finally:
        (tmp_path / "release").touch()


async def test_a_step_stopped_over_a_tool_name_the_model_made_up_shows_it_cleaned(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    """The model (steered by text it read) can call any name; past its retries the step's
    error names it, and the CLI prints that error."""

    def script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return ModelResponse(parts=[ToolCallPart("nope\x1b]0;pwned\x07\x1b[2J", {})])

    done = await run_project(sqlite_engine, tmp_path, project(), {MODEL: Scripted(script)})

    assert done.run.status is RunStatus.FAILED
    assert done.run.error is not None
    assert "nope" in done.run.error
    assert not any(c in done.run.error for c in "\x1b\x07"), repr(done.run.error)


async def test_a_run_cancelled_during_an_mcp_call_ends_the_server(
    sqlite_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "slow_server.py").write_text(SLOW_SERVER)
    pidfile = tmp_path / "server.pid"
    monkeypatch.setenv("PIDFILE", str(pidfile))
    top = f"mcp:\n  slow:\n    command: [{sys.executable}, slow_server.py]\n    env: [PIDFILE]"

    def script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if turns(messages) == 0:
            return ModelResponse(parts=[ToolCallPart("wait_long", {"seconds": 120})])
        return ModelResponse(parts=[TextPart("done")])

    path = write_project(tmp_path, project(top=top, tools="      - mcp: slow"))
    loaded = load_project_text(path.read_text(), str(path))
    model = Scripted(script).model()
    with override_models(lambda _label: model):
        run = await sqlite_engine.submit(loaded.spec, "w", {}, config_path=str(path))
        deadline = time.monotonic() + 30
        while not pidfile.exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert pidfile.exists()
        await sqlite_engine.cancel(run.id)
        ended = await sqlite_engine.wait(run.id)

    assert ended.status is RunStatus.CANCELLED
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
        pytest.fail(f"the MCP server (pid {pid}) outlived the run's cancel")
