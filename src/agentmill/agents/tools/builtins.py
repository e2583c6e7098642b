"""The built-in tools of an LLM agent, one pydantic-ai toolset per `tools:` entry.

    builtin_toolset("read_file", workspace=path)                 -> FunctionToolset([read_file])
    builtin_toolset("http_request", workspace=None, allow=[...]) -> FunctionToolset([http_request])

    read_file, list_files, search_files, write_file   builtin_files    the workspace
    http_request                                      builtin_http     `allow`: host globs
    run_command                                       builtin_command  `allow`: program names

The workspace is the one given here, else the current call's (`context.current_call()`);
with neither, the file tools and run_command refuse with a message the model passes on.
Every refusal or bad argument reaches the model as a `ModelRetry`, never as a crash.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic_ai.toolsets import FunctionToolset

from agentmill.agents.cli.process import Limits
from agentmill.agents.tools.builtin_command import run_command_tool
from agentmill.agents.tools.builtin_files import (
    list_files_tool,
    read_file_tool,
    search_files_tool,
    write_file_tool,
)
from agentmill.agents.tools.builtin_http import http_request_tool
from agentmill.errors import UserError

__all__ = [
    "BUILTIN_TOOLS",
    "DEFAULT_COMMAND_TIMEOUT",
    "DEFAULT_HTTP_TIMEOUT",
    "DEFAULT_MAX_OUTPUT",
    "NEEDS_ALLOW",
    "builtin_toolset",
]

BUILTIN_TOOLS = (
    "read_file",
    "list_files",
    "search_files",
    "write_file",
    "http_request",
    "run_command",
)
NEEDS_ALLOW = ("http_request", "run_command")
"""The built-ins that reach outside the workspace: usable only with an `allow` list."""

DEFAULT_MAX_OUTPUT = 64 * 1024
"""Bytes of a file, listing, search, response body or command output the model gets."""
DEFAULT_HTTP_TIMEOUT = 30.0
DEFAULT_COMMAND_TIMEOUT = 120.0


def builtin_toolset(
    name: str,
    *,
    workspace: Path | None,
    allow: Sequence[str] = (),
    max_output: int = DEFAULT_MAX_OUTPUT,
    timeout: float | None = None,
    limits: Limits | None = None,
) -> FunctionToolset[Any]:
    """The toolset of the built-in tool `name` (its one tool is named `name`).

    `allow` lists hosts (http_request) or programs (run_command); `timeout` bounds one call
    of those two (seconds); `limits` are run_command's resource limits.
    """
    if name not in BUILTIN_TOOLS:
        raise UserError(
            f"unknown built-in tool {name!r}: the built-in tools are {', '.join(BUILTIN_TOOLS)}"
        )
    if name in NEEDS_ALLOW and not allow:
        what = "hosts" if name == "http_request" else "programs"
        raise UserError(f"built-in tool {name} needs `allow`: the {what} it may use")
    if max_output < 1:
        raise UserError(f"max_output of {name} must be at least 1 byte")
    function = _tool_function(name, workspace, tuple(allow), max_output, timeout, limits)
    toolset: FunctionToolset[Any] = FunctionToolset(id=f"builtin:{name}")
    toolset.add_function(function, name=name, docstring_format="google")
    return toolset


def _tool_function(
    name: str,
    workspace: Path | None,
    allow: tuple[str, ...],
    max_output: int,
    timeout: float | None,
    limits: Limits | None,
) -> Callable[..., Any]:
    if name == "read_file":
        return read_file_tool(workspace, max_output)
    if name == "list_files":
        return list_files_tool(workspace, max_output)
    if name == "search_files":
        return search_files_tool(workspace, max_output)
    if name == "write_file":
        return write_file_tool(workspace)
    if name == "http_request":
        return http_request_tool(allow, max_output, timeout or DEFAULT_HTTP_TIMEOUT)
    return run_command_tool(
        workspace, allow, max_output, timeout or DEFAULT_COMMAND_TIMEOUT, limits or Limits()
    )
