"""The tools part of the format: MCP servers (top-level `mcp:`) and an agent's `tools:` entries.

Pure data, like `models`. Each check that needs only one entry lives here (exactly one kind,
options that fit the kind); checks across the file (unknown servers, agents, delegation
cycles) are in `validate`; checks of this machine (importable functions, programs on PATH)
in `agentmill.agents.tools.checks`.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import ConfigDict, Field, model_validator

from agentmill.spec._base import Strict
from agentmill.spec.durations import Duration

__all__ = [
    "BUILTIN_TOOLS",
    "DEFAULT_MCP_TIMEOUT",
    "FILE_TOOLS",
    "HOST_TOOL",
    "PROGRAM_TOOL",
    "TOOL_KINDS",
    "McpServerSpec",
    "ToolSpec",
    "tool_label",
]

FILE_TOOLS = ("read_file", "list_files", "search_files", "write_file")
"""Built-in tools confined to the step's workspace."""
HOST_TOOL = "http_request"
"""The built-in tool limited to the hosts in its `allow`."""
PROGRAM_TOOL = "run_command"
"""The built-in tool limited to the programs in its `allow`."""
BUILTIN_TOOLS = (*FILE_TOOLS, HOST_TOOL, PROGRAM_TOOL)
TOOL_KINDS = ("builtin", "mcp", "function", "agent")
"""The keys naming what a `tools:` entry is; an entry has exactly one of them."""

DEFAULT_MCP_TIMEOUT = 60.0
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
PREFIX_PATTERN = r"^[A-Za-z_][A-Za-z0-9_-]*$"

Approve = bool | list[str]
"""`true`: every call waits for a person; a list: calls of the tools whose names match a glob."""


class McpServerSpec(Strict):
    """An MCP server: a program spoken to over stdio, or a streamable-HTTP URL."""

    command: list[str] | None = Field(
        default=None, min_length=1, description="stdio: argument list of the server (no shell)"
    )
    url: str | None = Field(default=None, description="streamable HTTP: the server's URL")
    env: list[str] = Field(
        default_factory=list,
        description="stdio: environment variables passed to the server besides PATH, HOME, LANG",
    )
    cwd: str | None = Field(
        default=None, description="stdio: working directory (default: the config's directory)"
    )
    headers: dict[str, str] = Field(
        default_factory=dict, description="HTTP: headers; ${NAME} is read from the environment"
    )
    timeout: Duration = Field(default=DEFAULT_MCP_TIMEOUT, description="Limit per tool call")
    approve: Approve = Field(
        default=False, description="Default approval rule of the server's tools"
    )

    @model_validator(mode="after")
    def _one_transport(self) -> McpServerSpec:
        problem = _transport_problem(self) or _env_problem(self)
        if problem is not None:
            raise ValueError(problem)
        return self


def _transport_problem(server: McpServerSpec) -> str | None:
    """Exactly one of `command` and `url`, each with only its own options."""
    if (server.command is None) == (server.url is None):
        both = "has both" if server.command is not None else "needs one of"
        return (
            f"an MCP server {both} `command` and `url`: use `command: [program, arg, ...]` "
            "for a local server over stdio, or `url: https://...` for streamable HTTP"
        )
    if server.url is None:
        if server.headers:
            return (
                "`headers` only apply to servers with a `url`: use `env` to pass variables "
                "to a stdio server"
            )
        return None
    misplaced = [key for key, value in (("env", server.env), ("cwd", server.cwd)) if value]
    if misplaced:
        names = " and ".join(f"`{key}`" for key in misplaced)
        verb = "apply" if len(misplaced) > 1 else "applies"
        return (
            f"{names} only {verb} to servers with a `command`: use `headers` to pass "
            "values to an HTTP server"
        )
    if not server.url.startswith(("http://", "https://")):
        address = "use http://host:port/path or https://..."
        return f"the url {server.url!r} is not an http(s) address: {address}"
    return None


def _env_problem(server: McpServerSpec) -> str | None:
    for name in server.env:
        if re.fullmatch(ENV_NAME_PATTERN, name) is None:
            return f"{name!r} in `env` is not a variable name: use names like GITHUB_TOKEN"
    return None


_MCP_ONLY = ("include", "exclude", "prefix")
_DESCRIBED = ("function", "agent")


def _bare_name_allowed(schema: dict[str, Any]) -> None:
    """The JSON schema's half of `ToolSpec._bare_builtin`: an entry may be a built-in's name."""
    entry = dict(schema)
    schema.clear()
    schema["anyOf"] = [{"type": "string", "description": "A built-in tool by name"}, entry]


class ToolSpec(Strict):
    """One entry of an agent's `tools:`: a built-in, an MCP server, a function or an agent.

    A bare string is the short form of a built-in tool: `read_file` = `{builtin: read_file}`.
    """

    model_config = ConfigDict(json_schema_extra=_bare_name_allowed)

    builtin: str | None = Field(default=None, description="A built-in tool by name")
    mcp: str | None = Field(default=None, description="A key of the top-level `mcp:`")
    function: str | None = Field(
        default=None, description="`module:function`, importable from the config's directory"
    )
    agent: str | None = Field(default=None, description="Another (llm) agent of the file")
    include: list[str] | None = Field(
        default=None, description="mcp: globs of tool names to keep (before the prefix)"
    )
    exclude: list[str] | None = Field(
        default=None, description="mcp: globs of tool names to leave out (before the prefix)"
    )
    prefix: str | None = Field(
        default=None, pattern=PREFIX_PATTERN, description="mcp: added to the names the model sees"
    )
    allow: list[str] | None = Field(
        default=None, description="http_request: host globs; run_command: program names"
    )
    approve: Approve | None = Field(
        default=None, description="Calls wait for a person (default: the server's, else false)"
    )
    description: str | None = Field(
        default=None, description="function/agent: what the model is told the tool does"
    )
    timeout: Duration | None = Field(default=None, description="Limit per call")

    @model_validator(mode="before")
    @classmethod
    def _bare_builtin(cls, data: Any) -> Any:
        """`- read_file` is `- builtin: read_file`."""
        if isinstance(data, str):
            return {"builtin": data}
        if not isinstance(data, dict | ToolSpec):
            raise ValueError(
                f"a tool is a built-in's name or a mapping, got {type(data).__name__}: "
                "use e.g. `- read_file`, `- mcp: git` or `- function: module:function`"
            )
        return data

    @model_validator(mode="after")
    def _options_of_its_kind(self) -> ToolSpec:
        kinds = [kind for kind in TOOL_KINDS if getattr(self, kind) is not None]
        if len(kinds) != 1:
            found = " and ".join(f"`{kind}`" for kind in kinds) or "none of them"
            raise ValueError(
                f"a tool is exactly one of `builtin`, `mcp`, `function` or `agent`, this one "
                f"has {found}: use one entry per tool, e.g. `- read_file` or `- mcp: git`"
            )
        kind = kinds[0]
        problem = (
            _misplaced(self, _MCP_ONLY, kind == "mcp", "MCP servers (`mcp:` entries)")
            or _misplaced(
                self, ("description",), kind in _DESCRIBED, "`function:` and `agent:` tools"
            )
            or _allow_problem(self)
            or _approve_problem(self)
        )
        if problem is not None:
            raise ValueError(problem)
        return self


def _misplaced(tool: ToolSpec, keys: tuple[str, ...], fits: bool, what: str) -> str | None:
    given = [key for key in keys if getattr(tool, key) is not None]
    if fits or not given:
        return None
    names = ", ".join(f"`{key}`" for key in given)
    verb, pronoun = ("apply", "them") if len(given) > 1 else ("applies", "it")
    return f"{names} only {verb} to {what}: remove {pronoun}"


def _allow_problem(tool: ToolSpec) -> str | None:
    """`allow` is required by the two built-ins that reach outside and refused elsewhere."""
    if tool.builtin in (HOST_TOOL, PROGRAM_TOOL):
        example = "[api.github.com, '*.example.com']" if tool.builtin == HOST_TOOL else "[pytest]"
        what = "hosts it may reach" if tool.builtin == HOST_TOOL else "programs it may run"
        if not tool.allow:
            return (
                f"{tool.builtin} needs `allow`, the {what}: use e.g. "
                f"`{{builtin: {tool.builtin}, allow: {example}}}`"
            )
        urls = [host for host in tool.allow if "/" in host or ":" in host]
        if tool.builtin == HOST_TOOL and urls:
            return (
                f"`allow` of {HOST_TOOL} lists host names, not addresses ({urls[0]!r}): use "
                "e.g. api.github.com or '*.example.com'"
            )
        return None
    if tool.allow is not None:
        return f"`allow` only applies to {HOST_TOOL} and {PROGRAM_TOOL}: remove it"
    return None


def _approve_problem(tool: ToolSpec) -> str | None:
    if isinstance(tool.approve, list) and tool.mcp is None:
        return (
            "a list of globs in `approve` picks tools of an MCP server: use `approve: true` "
            "for this tool"
        )
    return None


def tool_label(tool: ToolSpec) -> str:
    """How messages name a tool entry: `read_file`, `mcp: git`, `function: m:f`, `agent: a`."""
    if tool.builtin is not None:
        return tool.builtin
    for kind in ("mcp", "function", "agent"):
        value = getattr(tool, kind)
        if value is not None:
            return f"{kind}: {value}"
    return "?"
