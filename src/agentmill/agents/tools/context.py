"""The tool call being executed, for the code that executes it.

A Python tool or a built-in reads `current_call()` for the idempotency key of its side
effects: the key is the same when a crash makes the durable loop run the call again, so a
tool that records what it did under the key can tell a repeat from a new call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Generator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentmill.agents.base import Usage

__all__ = ["ToolCall", "ToolOutcome", "current_call", "executing"]


@dataclass(frozen=True, kw_only=True)
class ToolCall:
    """One tool call of a step."""

    run_id: str
    step: str
    """The step's key (`step` or `step[index]`)."""
    name: str
    call_id: str
    """The call's id within its step (stable across a crash and resume)."""
    idempotency_key: str
    """`<run_id>/<step>/<call_id>`: identical when a crash repeats the call."""
    workspace: Path | None = None
    """The step's workspace: where built-in file tools and `run_command` work."""
    attempt: int = 1
    """The attempt of the step making the call."""
    stream: Callable[[str], Awaitable[None]] | None = None
    """Shows text live as part of the step while the tool works (an agent used as a tool)."""


@dataclass(frozen=True, kw_only=True)
class ToolOutcome:
    """A tool's result that cost something: an agent used as a tool returns its output with
    the usage and cost of its own model requests, recorded on the call and counted in the
    step's totals."""

    value: Any
    usage: Usage
    cost_usd: float | None
    model: str


_current: ContextVar[ToolCall | None] = ContextVar("agentmill_tool_call", default=None)


def current_call() -> ToolCall | None:
    """The tool call being executed, or None outside one."""
    return _current.get()


@contextlib.contextmanager
def executing(call: ToolCall) -> Generator[None]:
    """Make `call` the current one for the code running inside the block."""
    token = _current.set(call)
    try:
        yield
    finally:
        _current.reset(token)
