"""The real coding tools, when this machine has them: `--version` only, no network."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from agentmill.agents.cli.tools import tool_statuses
from agentmill.engine.engine import Engine
from agentmill.spec.loader import load_project_text
from agentmill.store import RunStatus


@pytest.mark.parametrize("preset", ["claude", "codex", "gemini", "aider"])
async def test_an_installed_tool_reports_its_version(preset: str) -> None:
    if shutil.which(preset) is None:
        pytest.skip(f"{preset} is not installed on this machine")
    (status,) = [s for s in await tool_statuses() if s.preset == preset]
    assert status.path == shutil.which(preset)
    assert status.version, f"`{preset} --version` printed nothing or failed"


async def test_real_claude_code_without_a_login_fails_the_step_with_its_own_message(
    sqlite_engine: Engine, repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Claude Code answers `Not logged in` without touching the network: the preset's
    command, stream-json parsing, session id and error rules meet the real tool."""
    if shutil.which("claude") is None:
        pytest.skip("claude is not installed on this machine")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no credentials of this machine's user
    (tmp_path / "home").mkdir()
    config = f"""
agents:
  coder: {{runtime: cli, preset: claude, env: [PATH, HOME], repo: {repo}, timeout: 60s}}
workflows:
  w:
    steps:
      - {{id: fix, agent: coder, prompt: "say hello"}}
"""
    run = await sqlite_engine.submit(load_project_text(config, "t.yaml").spec, "w", {})
    final = await asyncio.wait_for(sqlite_engine.wait(run.id), timeout=90)
    assert final.status is RunStatus.FAILED
    (step,) = await sqlite_engine.store.steps(run.id)
    assert "Not logged in" in (step.error or ""), step.error
    assert (step.details or {})["saved"]["session_id"]
