"""MCP servers as toolsets, on pydantic-ai's own MCP client (`MCPToolset` over FastMCP).

One `mcp: NAME` entry of an agent's `tools:` becomes `mcp_toolset(...)`: the server's tools,
narrowed by `include`/`exclude` globs on the server's own names, then renamed with `prefix`.
What this module adds to pydantic-ai's client:

- stdio servers start from an argument list (no shell) with only PATH, HOME, LANG and the
  allowlisted variables of agentmill's environment, so a secret not listed never reaches them
  (the MCP SDK adds its own harmless defaults: LOGNAME, SHELL, TERM, USER). One process per
  toolset entry, ended when the agent run leaves the toolset (no kept-alive server).
- their stderr goes to the debug log (capped), never onto the user's terminal, and its last
  lines explain a server that fails to start or stops during a call;
- HTTP headers read `${NAME}` from the environment when the toolset is built (a missing
  variable is a config error naming it and the server); header values are never logged;
- every call sends the call's idempotency key in `_meta` (`{"idempotency_key": ...}`), the same
  key when a crash makes the durable loop run the call again;
- errors a tool reports go back to the model (pydantic-ai's `ModelRetry`); a server that
  cannot start, is unreachable or stops mid-call is an error naming the server and the fix.

`list_server_tools` connects once with a timeout and lists the tools, for `doctor`.
"""

from __future__ import annotations

import asyncio
import fnmatch
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Self

import httpx2
from fastmcp.client.transports import StdioTransport, StreamableHttpTransport
from pydantic_ai import ModelRetry, RunContext, ToolDefinition
from pydantic_ai.mcp import CallToolFunc, MCPToolset, ToolResult
from pydantic_ai.toolsets import AbstractToolset, ToolsetTool, WrapperToolset

from agentmill.agents.tools._mcp_errors import (
    McpServerError,
    ServerTarget,
    closed_connection,
    connect_error,
    timed_out,
)
from agentmill.agents.tools._mcp_stderr import StderrPipe
from agentmill.agents.tools.context import current_call
from agentmill.errors import AgentmillError, ConfigError, ConfigProblem

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "McpServerError",
    "ToolInfo",
    "expand_headers",
    "list_server_tools",
    "mcp_toolset",
    "send_idempotency_key",
    "server_environment",
    "server_variables",
]

DEFAULT_CONNECT_TIMEOUT = 30.0
"""Seconds a server has to start and answer `initialize` (`npx` fetching a package is slow)."""
ALWAYS_PASSED = ("PATH", "HOME", "LANG")
"""Variables every stdio server gets; any other must be listed in the server's `env`."""
IDEMPOTENCY_META_KEY = "idempotency_key"

_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True, kw_only=True)
class ToolInfo:
    """A tool a server offers, as `doctor` lists it."""

    name: str
    description: str | None


def mcp_toolset(
    name: str,
    *,
    command: list[str] | None,
    url: str | None,
    env_names: Sequence[str],
    headers: Mapping[str, str],
    cwd: Path,
    timeout: float,
    include: Sequence[str],
    exclude: Sequence[str],
    prefix: str | None,
    environ: Mapping[str, str],
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
) -> AbstractToolset[Any]:
    """The tools of server `name` for one agent, to enter once per agent run.

    `timeout` bounds each call (a call past it is reported to the model as timed out);
    `environ` is agentmill's environment, read by the caller (the edge), not here.
    """
    server = _server_toolset(
        name,
        command=command,
        url=url,
        env_names=env_names,
        headers=headers,
        cwd=cwd,
        environ=environ,
        timeout=timeout,
        connect_timeout=connect_timeout,
    )
    toolset: AbstractToolset[Any] = server
    if include or exclude:
        toolset = toolset.filtered(_NameFilter(tuple(include), tuple(exclude)))
    if prefix:
        toolset = LiteralPrefixToolset(toolset, prefix=prefix)
    return toolset


async def list_server_tools(
    name: str,
    *,
    command: list[str] | None,
    url: str | None,
    env_names: Sequence[str],
    headers: Mapping[str, str],
    cwd: Path,
    environ: Mapping[str, str],
    connect_timeout: float = 10.0,
) -> list[ToolInfo]:
    """Start or reach server `name`, list its tools and disconnect, within `connect_timeout`.

    Raises an `AgentmillError` whose message names the server and the problem (program not
    found, exited with its last output, connection refused, HTTP 401, no answer in time).
    """
    server = _server_toolset(
        name,
        command=command,
        url=url,
        env_names=env_names,
        headers=headers,
        cwd=cwd,
        environ=environ,
        timeout=connect_timeout,
        connect_timeout=connect_timeout,
    )
    try:
        async with asyncio.timeout(connect_timeout), server:
            tools = await server.mcp.list_tools()
    except AgentmillError:
        raise
    except Exception as exc:
        raise server.failure(exc) from exc
    return [ToolInfo(name=tool.name, description=tool.description) for tool in tools]


def expand_headers(
    server: str, headers: Mapping[str, str], environ: Mapping[str, str]
) -> dict[str, str]:
    """`headers` with each `${NAME}` replaced by NAME's value in `environ`.

    The only place `${...}` is expanded. Every variable that is not set is reported at once,
    by name (values are never part of a message).
    """
    problems = [
        ConfigProblem(
            file=f"MCP server '{server}'",
            line=None,
            message=f"header '{header}' reads ${{{variable}}}, which is not set",
            hint=f"set {variable} in the environment agentmill runs in",
        )
        for header, value in headers.items()
        for variable in _PLACEHOLDER.findall(value)
        if variable not in environ
    ]
    if problems:
        raise ConfigError(problems)
    return {
        header: _PLACEHOLDER.sub(lambda match: environ[match.group(1)], value)
        for header, value in headers.items()
    }


def server_variables(env_names: Sequence[str], headers: Mapping[str, str]) -> list[str]:
    """The environment variables a server needs from agentmill's environment: what a stdio
    server is passed (PATH, HOME, LANG, its `env`) and what its headers read (`${NAME}`).
    The caller (an entry point) reads just these and passes them as `environ`."""
    wanted = [*ALWAYS_PASSED, *env_names]
    wanted += [name for value in headers.values() for name in _PLACEHOLDER.findall(value)]
    return list(dict.fromkeys(wanted))


def server_environment(env_names: Sequence[str], environ: Mapping[str, str]) -> dict[str, str]:
    """What a stdio server gets of `environ`: PATH, HOME, LANG and the listed names that are set."""
    wanted = (*ALWAYS_PASSED, *env_names)
    return {key: environ[key] for key in wanted if key in environ}


@dataclass
class McpServerToolset(WrapperToolset[Any]):
    """pydantic-ai's `MCPToolset` with agentmill's stderr handling and error messages.

    Entering it starts (stdio) or connects to (HTTP) the server; leaving it the last time
    stops the server. Failures become `connect_error`'s messages, with the server's last
    stderr lines for a stdio server.
    """

    target: ServerTarget = field(kw_only=True)
    connect_timeout: float = field(kw_only=True)
    call_timeout: float = field(kw_only=True)
    stdio: StdioTransport | None = field(default=None, kw_only=True)
    http_status: _HttpStatus | None = field(default=None, kw_only=True)
    stderr: StderrPipe | None = field(default=None, kw_only=True)
    _entered: int = field(default=0, init=False)

    @property
    def mcp(self) -> MCPToolset[Any]:
        assert isinstance(self.wrapped, MCPToolset)
        return self.wrapped

    async def __aenter__(self) -> Self:
        self._entered += 1
        if self._entered == 1 and self.stdio is not None and self.stderr is not None:
            self.stdio.log_file = self.stderr.open()
        if self._entered == 1 and self.http_status is not None:
            self.http_status.error = None
        try:
            await self.wrapped.__aenter__()
        except Exception as exc:
            self._left()
            raise self.failure(exc) from exc
        except BaseException:
            self._left()
            raise
        return self

    async def __aexit__(self, *args: Any) -> bool | None:
        try:
            return await self.wrapped.__aexit__(*args)
        finally:
            self._left()

    async def get_tools(self, ctx: RunContext[Any]) -> dict[str, ToolsetTool[Any]]:
        try:
            return await self.wrapped.get_tools(ctx)
        except Exception as exc:
            raise self.failure(exc) from exc

    async def call_tool(
        self, name: str, tool_args: dict[str, Any], ctx: RunContext[Any], tool: ToolsetTool[Any]
    ) -> Any:
        try:
            return await self.wrapped.call_tool(name, tool_args, ctx, tool)
        except ModelRetry as retry:
            if closed_connection(retry):
                raise self._stopped(name) from retry
            if timed_out(retry):
                message = (
                    f"{name} did not answer within {self.call_timeout:g}s (the limit per call)"
                )
                raise ModelRetry(message) from retry
            raise
        except McpServerError:
            raise
        except Exception as exc:
            if closed_connection(exc):
                raise self._stopped(name) from exc
            raise

    def failure(self, exc: BaseException) -> Exception:
        """`exc`, raised while starting or listing, as a message naming the server and fix."""
        return connect_error(
            self.target,
            exc,
            stderr=self.stderr.tail() if self.stderr is not None else "",
            http_status=self.http_status.error if self.http_status is not None else None,
            timeout=self.connect_timeout,
        )

    def _stopped(self, tool: str) -> McpServerError:
        name = self.target.name
        tail = self.stderr.tail() if self.stderr is not None else ""
        output = "" if not tail else "; its last output:\n" + _indent(tail)
        return McpServerError(
            name,
            f"MCP server '{name}' ({self.target.where}) stopped during a call to {tool}{output}",
        )

    def _left(self) -> None:
        self._entered -= 1
        if self._entered == 0 and self.stderr is not None:
            self.stderr.close()


@dataclass
class LiteralPrefixToolset(WrapperToolset[Any]):
    """Tool names with `prefix` put in front as written (`repo_` + `git_status`).

    pydantic-ai's `PrefixedToolset` joins with an underscore of its own (`repo__git_status`
    for `repo_`); the config's `prefix` is the text the model sees in front of each name.
    """

    prefix: str = field(kw_only=True)

    async def get_tools(self, ctx: RunContext[Any]) -> dict[str, ToolsetTool[Any]]:
        tools = await super().get_tools(ctx)
        return {
            self.prefix + name: replace(
                tool, toolset=self, tool_def=replace(tool.tool_def, name=self.prefix + name)
            )
            for name, tool in tools.items()
        }

    async def call_tool(
        self, name: str, tool_args: dict[str, Any], ctx: RunContext[Any], tool: ToolsetTool[Any]
    ) -> Any:
        original = name.removeprefix(self.prefix)
        ctx = replace(ctx, tool_name=original)
        tool = replace(tool, tool_def=replace(tool.tool_def, name=original))
        return await super().call_tool(original, tool_args, ctx, tool)


@dataclass(frozen=True)
class _NameFilter:
    """`include`/`exclude` globs (case-sensitive) on the server's own tool names."""

    include: tuple[str, ...]
    exclude: tuple[str, ...]

    def __call__(self, ctx: RunContext[Any], tool_def: ToolDefinition) -> bool:
        name = tool_def.name
        if self.include and not any(fnmatch.fnmatchcase(name, glob) for glob in self.include):
            return False
        return not any(fnmatch.fnmatchcase(name, glob) for glob in self.exclude)


@dataclass
class _HttpStatus:
    """The last HTTP error status the server answered: the MCP client reports a 401 only as
    'Server returned an error response', which tells the user nothing."""

    error: int | None = None

    async def record(self, response: httpx2.Response) -> None:
        # Requests are POSTs; a GET for the optional event stream may get 405, which is fine.
        if response.status_code >= 400 and response.request.method == "POST":
            self.error = response.status_code


def _server_toolset(
    name: str,
    *,
    command: list[str] | None,
    url: str | None,
    env_names: Sequence[str],
    headers: Mapping[str, str],
    cwd: Path,
    environ: Mapping[str, str],
    timeout: float,
    connect_timeout: float,
) -> McpServerToolset:
    if (command is None) == (url is None):
        raise ValueError(f"MCP server '{name}' needs exactly one of command and url")
    target = ServerTarget(name=name, command=command, url=url, cwd=cwd)
    stdio: StdioTransport | None = None
    status: _HttpStatus | None = None
    transport: StdioTransport | StreamableHttpTransport
    if command is not None:
        env = server_environment(env_names, environ)
        stdio = StdioTransport(command[0], command[1:], env=env, cwd=str(cwd), keep_alive=False)
        transport = stdio
    else:
        assert url is not None
        status = _HttpStatus()
        transport = StreamableHttpTransport(
            url,
            headers=expand_headers(name, headers, environ),
            httpx_client_factory=_client_factory(status),
        )
    toolset = MCPToolset[Any](
        transport,
        id=f"mcp_{name}",
        tool_error_behavior="retry",
        process_tool_call=send_idempotency_key,
        init_timeout=connect_timeout,
        read_timeout=timeout,
    )
    return McpServerToolset(
        toolset,
        target=target,
        connect_timeout=connect_timeout,
        call_timeout=timeout,
        stdio=stdio,
        http_status=status,
        stderr=StderrPipe(name) if stdio is not None else None,
    )


async def send_idempotency_key(
    ctx: RunContext[Any], call_tool: CallToolFunc, name: str, args: dict[str, Any]
) -> ToolResult:
    """`MCPToolset`'s `process_tool_call` hook: the call's key travels in the request's `_meta`."""
    call = current_call()
    metadata = {IDEMPOTENCY_META_KEY: call.idempotency_key} if call is not None else None
    return await call_tool(name, args, metadata=metadata)


def _client_factory(status: _HttpStatus) -> Any:
    """An httpx client factory for FastMCP's HTTP transport that records error statuses."""

    def factory(
        headers: dict[str, str] | None = None,
        timeout: httpx2.Timeout | None = None,
        auth: httpx2.Auth | None = None,
        **options: Any,
    ) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(
            headers=headers,
            timeout=timeout or httpx2.Timeout(30.0, read=300.0),
            auth=auth,
            event_hooks={"response": [status.record]},
            **options,
        )

    return factory


def _indent(text: str) -> str:
    return "\n".join(f"    {line}" for line in text.splitlines())
