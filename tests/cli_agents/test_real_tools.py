"""The real coding tools, when this machine has them: `--version` only, no network."""

from __future__ import annotations

import shutil

import pytest

from agentmill.agents.cli.tools import tool_statuses


@pytest.mark.parametrize("preset", ["claude", "codex", "gemini", "aider"])
async def test_an_installed_tool_reports_its_version(preset: str) -> None:
    if shutil.which(preset) is None:
        pytest.skip(f"{preset} is not installed on this machine")
    (status,) = [s for s in await tool_statuses() if s.preset == preset]
    assert status.path == shutil.which(preset)
    assert status.version, f"`{preset} --version` printed nothing or failed"
