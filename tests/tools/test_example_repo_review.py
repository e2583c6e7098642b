"""The shipped tools example (examples/repo-review.yaml) end to end: a scripted model reads a
real repository through mcp-server-git, writes REVIEW.md with write_file once a person
approved it with edited arguments."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

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
from agentmill.engine.project import load_checked
from agentmill.store import RunStatus
from tests.engine.tool_project import requested

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "repo-review.yaml"


def _repository(path: Path) -> None:
    path.mkdir()
    git = ["git", "-C", str(path), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], check=True)
    (path / "calc.py").write_text("def div(a, b):\n    return a / b\n")
    subprocess.run([*git, "add", "calc.py"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "Add a division helper"], check=True)


def _returns(messages: list[ModelMessage]) -> list[str]:
    return [
        str(part.content)
        for m in messages
        if isinstance(m, ModelRequest)
        for part in m.parts
        if isinstance(part, ToolReturnPart)
    ]


def _reviewer(repo: Path) -> FunctionModel:
    def script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        done = _returns(messages)
        if not done:
            return ModelResponse(
                parts=[
                    TextPart("Reading the log first."),
                    ToolCallPart("git_log", {"repo_path": str(repo), "max_count": 3}),
                ]
            )
        if len(done) == 1:
            review = f"# Review\n\ndiv divides by zero. Log: {done[0][:200]}"
            return ModelResponse(
                parts=[
                    TextPart("Saving the review."),
                    ToolCallPart("write_file", {"path": "REVIEW.md", "content": review}),
                ]
            )
        return ModelResponse(parts=[TextPart(f"Reviewed; {done[1]}")])

    return FunctionModel(script)


async def test_the_repo_review_example_reads_git_and_writes_an_approved_review(
    sqlite_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "unused: the model is scripted")
    repo = tmp_path / "repo"
    _repository(repo)
    config = repo / "agentmill.yaml"
    config.write_text(EXAMPLE.read_text().replace("[python,", f"[{json.dumps(sys.executable)},"))
    loaded = load_checked(config)

    with override_models(lambda _label: _reviewer(repo)):
        run = await sqlite_engine.submit(
            loaded.spec, "review-repo", {"repo": str(repo)}, config_path=str(config)
        )
        event = await requested(sqlite_engine, run.id, "review#t2.1")
        assert event.data["tool"] == "write_file"
        assert event.data["reason"] == "Saving the review."
        assert not (repo / "REVIEW.md").exists()
        edited = {"path": "REVIEW.md", "content": "# Review\n\ndiv(a, 0) raises.\n"}
        await sqlite_engine.decide(run.id, "review#t2.1", approve=True, by="lead", arguments=edited)
        async with asyncio.timeout(60):
            [_ async for _ in sqlite_engine.follow(run.id)]
    run = await sqlite_engine.store.get_run(run.id)

    assert run.status is RunStatus.SUCCEEDED, run.error
    assert (repo / "REVIEW.md").read_text() == "# Review\n\ndiv(a, 0) raises.\n"
    calls = await sqlite_engine.store.calls(run.id, "review")
    log = next(c for c in calls if c.name == "git_log")
    assert "Add a division helper" in json.dumps(log.result)
    assert run.outputs == {"review": "Reviewed; created REVIEW.md (28 bytes)"}
