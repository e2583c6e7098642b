"""A workflow whose agent uses a real third-party MCP server (mcp-server-time, mcp-server-git
from PyPI) through the engine: tools listed to the model, calls recorded, durable."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
from agentmill.store import CallStatus, RunStatus

CONFIG = """
version: 1
mcp:
  time:
    command: [{python}, -m, mcp_server_time, --local-timezone, UTC]
  git:
    command: [{python}, -m, mcp_server_git, --repository, repo]
agents:
  clerk:
    model: openai:gpt-4o
    tools:
      - mcp: time
        include: [get_current_time]
      - mcp: git
        prefix: repo_
        include: [git_log, git_status]
workflows:
  w:
    steps:
      - {{id: ask, agent: clerk, prompt: "what time is it, and what was committed?"}}
"""


def _repository(path: Path) -> None:
    path.mkdir()
    git = ["git", "-C", str(path), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], check=True)
    (path / "README.md").write_text("hello\n")
    subprocess.run([*git, "add", "README.md"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "First commit of the demo"], check=True)


async def test_an_agent_calls_real_mcp_servers_through_the_engine(
    engine: Engine, tmp_path: Path
) -> None:
    _repository(tmp_path / "repo")
    config = tmp_path / "agentmill.yaml"
    config.write_text(CONFIG.format(python=json.dumps(sys.executable)))
    offered: list[list[str]] = []

    def script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        offered.append(sorted(t.name for t in info.function_tools))
        returns = [
            part
            for m in messages
            if isinstance(m, ModelRequest)
            for part in m.parts
            if isinstance(part, ToolReturnPart)
        ]
        if not returns:
            return ModelResponse(
                parts=[
                    ToolCallPart("get_current_time", {"timezone": "UTC"}),
                    ToolCallPart("repo_git_log", {"repo_path": str(tmp_path / "repo")}),
                ]
            )
        return ModelResponse(parts=[TextPart(json.dumps([str(r.content) for r in returns]))])

    loaded = load_project_text(config.read_text(), str(config))
    model = FunctionModel(script)
    with override_models(lambda _label: model):
        run = await engine.submit(loaded.spec, "w", {}, config_path=str(config))
        [_ async for _ in engine.follow(run.id)]
    run = await engine.store.get_run(run.id)

    assert run.status is RunStatus.SUCCEEDED, run.error
    assert offered[0] == ["get_current_time", "repo_git_log", "repo_git_status"]
    answers = json.loads(run.outputs["ask"])  # type: ignore[index]
    assert "UTC" in answers[0]
    assert "First commit of the demo" in answers[1]
    calls = await engine.store.calls(run.id, "ask")
    tools = [(c.name, c.status) for c in calls if c.kind == "tool"]
    assert sorted(tools) == [
        ("get_current_time", CallStatus.SUCCEEDED),
        ("repo_git_log", CallStatus.SUCCEEDED),
    ]
