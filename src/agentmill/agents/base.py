"""The one extension point for doing a step's work: `Agent.run(request, context)`.

An agent turns a rendered prompt into a `StepResult`, streaming text through the context
as it goes. Policies (retries, timeouts; later budgets, caching) wrap an agent rather than
growing flags inside it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "Agent",
    "DurableContext",
    "StepContext",
    "StepRequest",
    "StepResult",
    "Usage",
    "as_durable",
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

    @property
    def key(self) -> str:
        """Stable identity of this call within its run (also the idempotency key suffix)."""
        return self.step_id if self.index is None else f"{self.step_id}[{self.index}]"


@dataclass(kw_only=True)
class Usage:
    """Token usage of one or more model requests."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    requests: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cache_read_tokens=self.cache_read_tokens + other.cache_read_tokens,
            requests=self.requests + other.requests,
        )

    def to_json(self) -> dict[str, int]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_tokens": self.cache_read_tokens,
            "requests": self.requests,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Usage:
        return cls(**{k: int(v) for k, v in data.items() if k in _USAGE_FIELDS})


_USAGE_FIELDS = {"input_tokens", "output_tokens", "cache_read_tokens", "requests"}


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
