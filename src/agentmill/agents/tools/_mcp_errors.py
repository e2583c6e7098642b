"""What went wrong with an MCP server, in words that name the server and the fix.

The MCP client stack (pydantic-ai -> FastMCP -> the MCP SDK -> anyio/httpx) reports a failed
start as whatever its innermost layer raised, often wrapped in exception groups: a missing
program is a `FileNotFoundError` three causes deep, a server that exited is "Connection
closed", an HTTP 401 is "Server returned an error response". This module maps those, once,
to agentmill's errors: a fix in the config or the environment is a user error (not retried),
a server that is down or crashed is a run failure (the step's attempt may be retried).
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from mcp.shared.exceptions import MCPError
from mcp_types import CONNECTION_CLOSED, REQUEST_TIMEOUT

from agentmill.errors import (
    AgentmillError,
    MissingCredentialError,
    MissingDependencyError,
    RunFailure,
)
from agentmill.logs import strip_controls

__all__ = [
    "McpServerError",
    "ServerTarget",
    "closed_connection",
    "connect_error",
    "shown_url",
    "timed_out",
]


class McpServerError(RunFailure):
    """An MCP server that could not be reached, stopped before it answered, or stopped during
    a call. The message names the server and what to check."""

    def __init__(self, server: str, message: str) -> None:
        self.server = server
        super().__init__(message)


@dataclass(frozen=True, kw_only=True)
class ServerTarget:
    """How a server is reached, as error messages show it (no header, no variable value)."""

    name: str
    command: Sequence[str] | None = None
    url: str | None = None
    cwd: Path | None = None

    @property
    def where(self) -> str:
        if self.command is not None:
            return f"`{shlex.join(self.command)}`"
        return shown_url(self.url or "")


def shown_url(url: str) -> str:
    """A URL without its user info, query and fragment, which may hold credentials."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def connect_error(
    target: ServerTarget,
    exc: BaseException,
    *,
    stderr: str = "",
    http_status: int | None = None,
    timeout: float | None = None,
) -> AgentmillError:
    """The error to show for a server that could not be started or reached."""
    name = target.name
    if isinstance(exc, AgentmillError):
        return exc
    if http_status is not None:
        return _http_status_error(target, http_status)
    causes = list(_causes(exc))
    missing = next((e for e in causes if isinstance(e, FileNotFoundError | PermissionError)), None)
    if target.command is not None and missing is not None:
        return _program_error(target, missing)
    if any(isinstance(e, TimeoutError) for e in causes):
        seconds = f" within {timeout:g}s" if timeout is not None else ""
        return McpServerError(
            name,
            f"MCP server '{name}' ({target.where}) did not answer{seconds}{_last_output(stderr)}\n"
            f"  fix: check that it is an MCP server (over {_transport(target)}) and that it "
            "starts on this machine",
        )
    if target.command is not None:
        return McpServerError(
            name,
            f"MCP server '{name}' ({target.where}) stopped before it answered"
            f"{_last_output(stderr)}\n  fix: run the command by hand to see why, or fix "
            f"`command` in `mcp: {name}`",
        )
    return McpServerError(
        name,
        f"MCP server '{name}' at {target.where} is unreachable: {_reason(causes)}\n"
        f"  fix: start the server, or fix `url` in `mcp: {name}`",
    )


def closed_connection(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) says the server's connection closed under a call."""
    return _has_code(exc, CONNECTION_CLOSED)


def timed_out(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) is the client giving up waiting for an answer."""
    return _has_code(exc, REQUEST_TIMEOUT)


def _has_code(exc: BaseException, code: int) -> bool:
    return any(isinstance(e, MCPError) and e.code == code for e in _causes(exc))


def _program_error(target: ServerTarget, exc: OSError) -> AgentmillError:
    name = target.name
    program = (target.command or ["?"])[0]
    if target.cwd is not None and exc.filename is not None and Path(exc.filename) == target.cwd:
        return MissingDependencyError(
            f"MCP server '{name}': its working directory {target.cwd} does not exist: "
            f"create it, or fix `cwd` in `mcp: {name}`"
        )
    if isinstance(exc, PermissionError):
        return MissingDependencyError(
            f"MCP server '{name}': '{program}' cannot be run (permission denied): make it "
            f"executable, or fix `command` in `mcp: {name}`"
        )
    return MissingDependencyError(
        f"MCP server '{name}': program '{program}' was not found: install it, or fix "
        f"`command` in `mcp: {name}` (a program on PATH or a path)"
    )


def _http_status_error(target: ServerTarget, status: int) -> AgentmillError:
    name = target.name
    if status in (401, 403):
        return MissingCredentialError(
            f"MCP server '{name}' at {target.where} refused the credentials (HTTP {status}): "
            f"check `headers` in `mcp: {name}` and the variables they read"
        )
    return McpServerError(
        name,
        f"MCP server '{name}' at {target.where} answered HTTP {status}\n"
        f"  fix: check `url` in `mcp: {name}` (the path of its MCP endpoint, often /mcp)",
    )


def _reason(causes: list[BaseException]) -> str:
    """The innermost OS-level reason (connection refused, unknown host), else the first text."""
    for error in reversed(causes):
        if isinstance(error, ConnectionRefusedError):
            return "connection refused"
        if isinstance(error, OSError) and error.strerror:
            return error.strerror
    for error in causes:
        if str(error):
            return f"{type(error).__name__}: {error}"
    return type(causes[0]).__name__ if causes else "unknown error"


def _last_output(stderr: str) -> str:
    """The server's last stderr lines, cleaned: they are untrusted and end up on a terminal
    (the step's error), where an escape sequence could rewrite what the user sees."""
    stderr = strip_controls(stderr)
    if not stderr.strip():
        return ""
    lines = "\n".join(f"    {line}" for line in stderr.splitlines())
    return f"; its last output:\n{lines}"


def _transport(target: ServerTarget) -> str:
    return "stdio" if target.command is not None else "streamable HTTP"


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, its causes and contexts, and the members of exception groups, each once."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        error = stack.pop()
        if id(error) in seen:
            continue
        seen.add(id(error))
        yield error
        if isinstance(error, BaseExceptionGroup):
            stack.extend(error.exceptions)
        for linked in (error.__cause__, error.__context__):
            if linked is not None:
                stack.append(linked)
