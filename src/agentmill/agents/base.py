"""The one extension point for doing a step's work: `Agent.run(request, context)`.

An agent turns a rendered prompt into a `StepResult`, streaming text through the context
as it goes. Policies (retries, timeouts; later budgets, caching) wrap an agent rather than
growing flags inside it.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "Agent",
    "DurableContext",
    "ModelTurn",
    "StepContext",
    "StepRequest",
    "StepResult",
    "Usage",
    "as_durable",
    "estimate_input_tokens",
    "estimate_tokens",
]


@dataclass(frozen=True, kw_only=True)
class StepRequest:
    """One call of an agent within a run."""

    run_id: str
    step_id: str
    prompt: str
    index: int | None = None
    """Item index within a `foreach` step, else None."""
    attempt: int = 1
    untrusted: tuple[tuple[str, str], ...] = ()
    """Untrusted text the prompt includes, as (source, text): e.g. ("inputs.body", ...)."""
    turn: ModelTurn | None = None
    """Set on the model requests an agent loop with tools makes: the conversation so far
    and the tools offered. `prompt` is then the whole request as canonical text."""

    @property
    def step_key(self) -> str:
        """The step call's identity within its run: `step` or `step[index]`."""
        return self.step_id if self.index is None else f"{self.step_id}[{self.index}]"

    @property
    def key(self) -> str:
        """Stable identity of this call within its run (also the idempotency key suffix):
        the step call's key, with `#m<n>` for the n-th model request of an agent loop."""
        if self.turn is None:
            return self.step_key
        return f"{self.step_key}#m{self.turn.number}"


@dataclass(frozen=True, kw_only=True)
class ModelTurn:
    """One model request of an agent loop: pydantic-ai messages and request parameters."""

    number: int
    messages: list[Any]
    """`pydantic_ai.messages.ModelMessage`s, the conversation so far."""
    parameters: Any
    """`pydantic_ai.models.ModelRequestParameters`: the tools offered, the output mode."""
    settings: Any = None
    """`pydantic_ai.settings.ModelSettings` pydantic-ai's agent asks for (merged over the
    agent's own)."""


@dataclass(kw_only=True)
class Usage:
    """Token usage of one or more model requests."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    requests: int = 0
    estimated: bool = False
    """The provider reported no usage for (some of) these requests: their token counts are
    agentmill's estimate from the text sent and received (`estimate_tokens`), never zero."""

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cache_read_tokens=self.cache_read_tokens + other.cache_read_tokens,
            requests=self.requests + other.requests,
            estimated=self.estimated or other.estimated,
        )

    def to_json(self) -> dict[str, int | bool]:
        data: dict[str, int | bool] = {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_tokens": self.cache_read_tokens,
            "requests": self.requests,
        }
        if self.estimated:
            data["estimated"] = True
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Usage:
        counts = {k: int(v) for k, v in data.items() if k in _USAGE_FIELDS}
        return cls(**counts, estimated=bool(data.get("estimated")))


_USAGE_FIELDS = {"input_tokens", "output_tokens", "cache_read_tokens", "requests"}


REQUEST_OVERHEAD_TOKENS = 32
"""Tokens a request costs beyond its text (roles, message framing)."""


def estimate_input_tokens(*texts: str) -> int:
    """A conservative count of the tokens a request sending `texts` reads: their
    `estimate_tokens` plus the request overhead."""
    return REQUEST_OVERHEAD_TOKENS + estimate_tokens(*texts)


def estimate_tokens(*texts: str) -> int:
    """A conservative count of the tokens in `texts`, for a provider that reports none: one
    per 3 ASCII characters (English averages about 4, code about 3.5), two per other
    character (CJK, emoji)."""
    total = 0
    for text in texts:
        ascii_chars = len(text) if text.isascii() else sum(c < "\x80" for c in text)
        total += math.ceil(ascii_chars / 3) + 2 * (len(text) - ascii_chars)
    return total


@dataclass(frozen=True, kw_only=True)
class StepResult:
    """What one agent call produced: text or a JSON value, usage, and the model used."""

    output: Any
    model: str
    usage: Usage = field(default_factory=Usage)
    cost_usd: float | None = None
    """What the call cost; None when the model's price is unknown (never shown as zero)."""
    details: dict[str, Any] = field(default_factory=dict)
    """What the policies did, as JSON: `cached`, `fallback`, `guard` ... (see docs/policies.md)."""


class StepContext(Protocol):
    """What an agent may do while it runs: stream text to the run's event log."""

    async def emit_text(self, text: str) -> None:
        """Append a chunk of output text (streamed live, persisted in order)."""
        ...


@runtime_checkable
class DurableContext(StepContext, Protocol):
    """What the engine's context also offers: structured events and state kept across
    attempts, so a call interrupted by a crash can pick up where it was (a session id)."""

    async def emit_event(self, kind: str, **data: Any) -> None:
        """Append a `step_<kind>` event (e.g. `step_tool`) to the run's event log."""
        ...

    @property
    def saved(self) -> Mapping[str, Any]:
        """What earlier attempts of this call saved; empty on a first attempt."""
        ...

    async def save(self, **values: Any) -> None:
        """Record values durably now; a later attempt (even after a crash) reads them."""
        ...

    def note(self, **details: Any) -> None:
        """Details of this attempt, recorded with the step when the attempt fails (a
        success records its result's `details` instead), e.g. a tool's exit status."""
        ...

    @property
    def timed_out(self) -> bool:
        """Whether the call's timeout has expired: an agent being cancelled can tell a
        timeout from a cancel of the run or a shutdown."""
        ...


class _Ephemeral:
    """A DurableContext over a plain StepContext: events are dropped, nothing is kept."""

    def __init__(self, inner: StepContext) -> None:
        self._inner = inner
        self._saved: dict[str, Any] = {}

    async def emit_text(self, text: str) -> None:
        await self._inner.emit_text(text)

    async def emit_event(self, kind: str, **data: Any) -> None:
        return None

    @property
    def saved(self) -> Mapping[str, Any]:
        return self._saved

    async def save(self, **values: Any) -> None:
        self._saved.update(values)

    def note(self, **details: Any) -> None:
        return None

    @property
    def timed_out(self) -> bool:
        return False


def as_durable(context: StepContext) -> DurableContext:
    """The context itself when it is durable, else an adapter that keeps nothing."""
    if isinstance(context, DurableContext):
        return context
    return _Ephemeral(context)


class Agent(ABC):
    """Does the work of one step call."""

    @abstractmethod
    async def run(self, request: StepRequest, context: StepContext) -> StepResult:
        """Run the call, streaming text through `context`, and return its result."""
