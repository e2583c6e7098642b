"""An agent's `tools:` entries as pydantic-ai toolsets, each marked with its approval rule.

One toolset per entry: a built-in (`builtins.py`), an MCP server (`mcp.py`, narrowed by
`include`/`exclude` and renamed by `prefix`), a project function (`module:function`), or
another agent (`delegation.py`). The entry's `approve` rule travels with its tools as
metadata, so the loop decides per call without knowing where a tool came from.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentmill.errors import UserError
from agentmill.spec.tools import McpServerSpec, ToolSpec

if TYPE_CHECKING:
    from pydantic_ai.tools import ToolDefinition
    from pydantic_ai.toolsets import AbstractToolset

__all__ = ["APPROVE_KEY", "ToolsetFactory", "needs_approval", "tool_toolsets"]

APPROVE_KEY = "agentmill_approve"
"""Tool metadata: `True`, or the globs of the tool names (before any prefix) that wait."""
PREFIX_KEY = "agentmill_prefix"

ToolsetFactory = Callable[[str, ToolSpec], "AbstractToolset[Any]"]
"""Builds the toolset of an `agent:` entry (named agent, entry): supplied by the caller,
who knows how to run another agent of the run."""


def tool_toolsets(
    tools: list[ToolSpec],
    *,
    servers: Mapping[str, McpServerSpec],
    base_dir: Path,
    delegate: ToolsetFactory | None = None,
    environ: Mapping[str, str] | None = None,
) -> list[AbstractToolset[Any]]:
    """The toolsets of an agent's `tools:` entries, in order."""
    environment = os.environ if environ is None else environ
    toolsets: list[AbstractToolset[Any]] = []
    for tool in tools:
        server = servers.get(tool.mcp) if tool.mcp is not None else None
        toolset = _toolset(tool, server, base_dir, delegate, environment)
        approve = _approve_rule(tool, server)
        if approve:
            toolset = toolset.with_metadata(**{APPROVE_KEY: approve, PREFIX_KEY: tool.prefix})
        toolsets.append(toolset)
    return toolsets


def needs_approval(tool_def: ToolDefinition) -> bool:
    """Whether a call of this tool waits for a person's decision."""
    metadata = tool_def.metadata or {}
    rule = metadata.get(APPROVE_KEY)
    if not rule:
        return False
    if rule is True:
        return True
    name = tool_def.name
    prefix = metadata.get(PREFIX_KEY)
    if prefix and name.startswith(prefix):
        name = name[len(prefix) :]
    return any(fnmatch.fnmatchcase(name, glob) for glob in rule)


def _approve_rule(tool: ToolSpec, server: McpServerSpec | None) -> bool | list[str]:
    if tool.approve is not None:
        return tool.approve
    return server.approve if server is not None else False


def _toolset(
    tool: ToolSpec,
    server: McpServerSpec | None,
    base_dir: Path,
    delegate: ToolsetFactory | None,
    environ: Mapping[str, str],
) -> AbstractToolset[Any]:
    if tool.builtin is not None:
        from agentmill.agents.tools.builtins import builtin_toolset

        return builtin_toolset(
            tool.builtin, workspace=None, allow=tool.allow or (), timeout=tool.timeout
        )
    if tool.function is not None:
        return _function_toolset(tool.function, tool, base_dir)
    if tool.agent is not None:
        if delegate is None:
            raise _problem(f"agent '{tool.agent}' cannot be used as a tool here")
        return delegate(tool.agent, tool)
    assert tool.mcp is not None
    if server is None:
        raise _problem(f"unknown MCP server '{tool.mcp}': declare it under the top-level `mcp:`")
    return _mcp_toolset(tool, server, base_dir, environ)


def _function_toolset(target: str, tool: ToolSpec, base_dir: Path) -> AbstractToolset[Any]:
    from pydantic_ai.toolsets import FunctionToolset

    from agentmill.agents.tools.checks import FunctionToolError, import_function

    try:
        function = import_function(target, base_dir)
    except FunctionToolError as exc:
        raise _problem(f"tool function '{target}': {exc}") from None
    toolset: FunctionToolset[Any] = FunctionToolset(id=f"function:{target}")
    toolset.add_function(function, description=tool.description, timeout=tool.timeout)
    return toolset


def _mcp_toolset(
    tool: ToolSpec, server: McpServerSpec, base_dir: Path, environ: Mapping[str, str]
) -> AbstractToolset[Any]:
    from agentmill.agents.tools.mcp import mcp_toolset

    assert tool.mcp is not None
    cwd = base_dir / server.cwd if server.cwd else base_dir
    return mcp_toolset(
        tool.mcp,
        command=server.command,
        url=server.url,
        env_names=server.env,
        headers=server.headers,
        cwd=cwd,
        timeout=tool.timeout or server.timeout,
        include=tool.include or (),
        exclude=tool.exclude or (),
        prefix=tool.prefix,
        environ=environ,
    )


def _problem(message: str) -> UserError:
    return UserError(message)
