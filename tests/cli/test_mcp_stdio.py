"""`agentmill mcp` driven by the real `mcp` client over stdio: the workflows as tools.

The server is the real CLI with every model replaced by the recording model of
`tests/fixtures/recording_cli.py` (answers `done <prompt>`, logs each call).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

from tests.cli.conftest import RECORDING_CLI, Cli

CONFIG = """
version: 1
models: {default: openai:gpt-4o}
agents:
  writer: {instructions: be brief}
workflows:
  echo:
    description: Draft and polish a text about a topic
    inputs:
      topic: {type: string, description: What to write about}
      count: {type: integer, default: 2}
    steps:
      - {id: draft, agent: writer, prompt: "draft {{ inputs.topic }} x{{ inputs.count }}"}
      - {id: polish, agent: writer, needs: [draft], prompt: "polish {{ steps.draft.output }}"}
  fails:
    steps:
      - {id: only, agent: writer, prompt: "please explode"}
  gated:
    steps:
      - {id: draft, agent: writer, prompt: "draft"}
      - id: sign-off
        needs: [draft]
        approval: {prompt: "Ship {{ steps.draft.output }}?"}
      - {id: publish, agent: writer, needs: [sign-off], prompt: "publish"}
"""


@asynccontextmanager
async def _session(cli: Cli) -> AsyncGenerator[ClientSession]:
    config = cli.cwd / "agentmill.yaml"
    config.write_text(CONFIG)
    params = StdioServerParameters(
        command=sys.executable,
        args=[str(RECORDING_CLI), "mcp", str(config)],
        env=cli.env | {"AGENTMILL_TEST_LATENCY": "0.05", "AGENTMILL_TEST_FAIL_ON": "explode"},
        cwd=cli.cwd,
    )
    with (cli.cwd / "stderr.log").open("w") as errlog:
        async with (
            stdio_client(params, errlog=errlog) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            yield session


async def test_lists_each_workflow_as_a_tool_with_its_inputs_schema(cli: Cli) -> None:
    async with _session(cli) as session:
        tools = {tool.name: tool for tool in (await session.list_tools()).tools}
    assert sorted(tools) == ["echo", "fails", "gated"]
    echo = tools["echo"]
    assert echo.description == "Draft and polish a text about a topic"
    assert echo.input_schema == {
        "type": "object",
        "properties": {
            "topic": {"type": "string", "description": "What to write about"},
            "count": {"type": "integer", "default": 2},
        },
        "required": ["topic"],
        "additionalProperties": False,
    }
    assert tools["fails"].input_schema["properties"] == {}


async def test_calling_a_tool_runs_the_workflow_and_returns_its_outputs(cli: Cli) -> None:
    reports: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        reports.append((progress, total, message))

    async with _session(cli) as session:
        result = await session.call_tool(
            "echo", {"topic": "otters", "count": "3"}, progress_callback=on_progress
        )
    assert not result.is_error, result.content
    structured: dict[str, Any] = result.structured_content
    assert structured["status"] == "succeeded"
    assert structured["outputs"] == {"polish": "done polish done draft otters x3"}
    text = result.content[0]
    assert text.type == "text"
    assert json.loads(text.text) == structured
    assert cli.calls() == ["draft otters x3", "polish done draft otters x3"]
    assert reports[0] == (0, 2, f"run {structured['run_id']} started")
    assert (2, 2, "polish: finished") in reports


async def test_bad_inputs_are_a_tool_error_naming_them_and_start_nothing(cli: Cli) -> None:
    async with _session(cli) as session:
        result = await session.call_tool("echo", {"count": "many", "colour": "red"})
        unknown = await session.call_tool("nope", {})
    assert result.is_error
    message = result.content[0].text  # type: ignore[union-attr]
    assert "missing required input 'topic'" in message
    assert "input 'count' must be an integer" in message
    assert "unknown input 'colour'" in message
    assert unknown.is_error
    assert "no tool 'nope'" in unknown.content[0].text  # type: ignore[union-attr]
    assert cli.calls() == []


async def test_a_failed_run_is_a_tool_error_naming_the_run(cli: Cli) -> None:
    async with _session(cli) as session:
        result = await session.call_tool("fails", {})
    assert result.is_error
    message: str = result.content[0].text  # type: ignore[union-attr]
    assert message.startswith("run ")
    assert " failed: " in message
    run_id = message.split()[1]
    shown = cli.run("runs", "show", run_id, "--json")
    assert json.loads(shown.stdout)["status"] == "failed"


async def test_a_run_at_an_approval_gate_answers_at_once_then_finishes_once_approved(
    cli: Cli,
) -> None:
    async with _session(cli) as session:
        with anyio.fail_after(60):  # a call that waited at the gate would never answer
            result = await session.call_tool("gated", {})
        assert not result.is_error, result.content
        waiting: dict[str, Any] = result.structured_content
        assert waiting["status"] == "waiting_for_approval"
        assert waiting["step"] == "sign-off"
        assert waiting["prompt"] == "Ship done draft?"
        run_id = waiting["run_id"]
        approved = cli.run("approve", run_id, "sign-off")
        assert approved.returncode == 0, approved.stderr
        run = await _read_run_until_finished(session, run_id)
    assert run["status"] == "succeeded"
    assert run["outputs"] == {"publish": "done publish"}


async def _read_run_until_finished(session: ClientSession, run_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        read = await session.read_resource(f"agentmill://runs/{run_id}")
        run: dict[str, Any] = json.loads(read.contents[0].text)  # type: ignore[union-attr]
        if run["status"] in {"succeeded", "failed", "cancelled"} or time.monotonic() > deadline:
            return run
        await anyio.sleep(0.05)
