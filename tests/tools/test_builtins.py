"""The built-in toolset factory: one tool per entry, named as in the config; configuration
mistakes are user errors naming the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentmill.agents.tools.builtins import BUILTIN_TOOLS, builtin_toolset
from agentmill.errors import UserError


@pytest.mark.parametrize("name", BUILTIN_TOOLS)
async def test_each_builtin_is_one_tool_with_its_name(name: str, tmp_path: Path) -> None:
    toolset = builtin_toolset(name, workspace=tmp_path, allow=["example.com"])
    assert list(toolset.tools) == [name]
    assert toolset.tools[name].description


def test_the_allowlist_is_shown_to_the_model(tmp_path: Path) -> None:
    http = builtin_toolset("http_request", workspace=None, allow=["api.github.com"])
    assert "Hosts that may be reached: api.github.com." in (
        http.tools["http_request"].description or ""
    )
    command = builtin_toolset("run_command", workspace=tmp_path, allow=["pytest", "git"])
    assert "pytest, git." in (command.tools["run_command"].description or "")


def test_an_unknown_builtin_is_a_user_error() -> None:
    with pytest.raises(UserError, match=r"unknown built-in tool 'read_files'.*read_file"):
        builtin_toolset("read_files", workspace=None)


@pytest.mark.parametrize(("name", "what"), [("http_request", "hosts"), ("run_command", "programs")])
def test_tools_that_reach_out_need_an_allowlist(name: str, what: str) -> None:
    with pytest.raises(UserError, match=f"{name} needs `allow`: the {what}"):
        builtin_toolset(name, workspace=None)
