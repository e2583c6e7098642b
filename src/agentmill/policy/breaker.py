"""Circuit breakers: stop calling a provider that keeps failing, probe it now and then.

One breaker per provider (`openai`, `anthropic`, ...), or per provider and server for models
with a `base_url` (`openai@http://127.0.0.1:11434/v1`), so two servers speaking the same API
never trip each other. States:

- **closed**: calls go through; `failures` transient failures in a row open it.
- **open**: calls fail at once with `CircuitOpen`, without calling the model, for `reset`
  seconds.
- **half-open**: after `reset`, exactly one call at a time goes through as a probe; its
  success closes the breaker, its transient failure opens it again for `reset` seconds.

Only transient provider failures count (429, 5xx, timeouts, lost connections). A 4xx answer,
a budget or guard refusal, a cancelled call or any other error neither counts nor resets
the count, and frees the probe slot of a half-open breaker.

State lives in the process (`Breakers`, shared by every run through `PolicyServices`), not
in the database: it reflects what this process saw of the provider on its own network path,
costs nothing per call (no round trip on the hot path), and is rebuilt within `failures`
calls after a restart. Each worker process therefore learns about an outage by itself.
"""

from __future__ import annotations

import enum
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from agentmill.agents.base import Agent, StepContext, StepRequest, StepResult
from agentmill.errors import ProviderError
from agentmill.spec.models import BreakerSpec

__all__ = ["BreakerAgent", "Breakers", "CircuitBreaker", "CircuitOpen", "behind_breaker", "key_of"]

logger = logging.getLogger("agentmill.policy")

_URL_PART = re.compile(r"@(?=[a-zA-Z][a-zA-Z0-9+.-]*://)")


def key_of(label: str) -> str:
    """The breaker key of a model label `provider:name[@url]`: the provider, plus the URL
    when the model has one."""
    provider = label.split(":", 1)[0]
    match = _URL_PART.search(label)
    if match is None:
        return provider
    return f"{provider}@{label[match.end() :].rstrip('/')}"


class CircuitOpen(ProviderError):
    """A call refused without calling the model: its provider's breaker is open (or
    half-open with a probe in flight)."""

    def __init__(self, message: str, *, key: str, retry_in: float) -> None:
        super().__init__(message, transient=True, retry_after=retry_in)
        self.key = key
        self.retry_in = retry_in


class State(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class Ticket:
    """An admitted call: whether it is the probe, and the breaker generation it saw."""

    probe: bool
    generation: int


class CircuitBreaker:
    """The breaker of one provider key. Thread- and task-safe; no awaits inside."""

    def __init__(self, key: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.key = key
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None
        self._reset = BreakerSpec().reset
        self._probing = False
        self._generation = 0
        """Bumped on every open and close: outcomes of calls admitted before are stale."""

    def state(self) -> State:
        with self._lock:
            return self._state()

    def _state(self) -> State:
        if self._opened_at is None:
            return State.CLOSED
        if self._clock() < self._opened_at + self._reset:
            return State.OPEN
        return State.HALF_OPEN

    def available(self, spec: BreakerSpec) -> bool:
        """Whether a call would be admitted now (without admitting it)."""
        with self._lock:
            self._reset = spec.reset
            state = self._state()
            return state is State.CLOSED or (state is State.HALF_OPEN and not self._probing)

    def admit(self, spec: BreakerSpec, label: str) -> Ticket:
        """Let a call through, or raise `CircuitOpen`."""
        with self._lock:
            self._reset = spec.reset
            state = self._state()
            if state is State.CLOSED:
                return Ticket(probe=False, generation=self._generation)
            if state is State.HALF_OPEN and not self._probing:
                self._probing = True
                logger.info("circuit for %s is half-open: probing with %s", self.key, label)
                return Ticket(probe=True, generation=self._generation)
            raise self._refusal(state, label)

    def _refusal(self, state: State, label: str) -> CircuitOpen:
        assert self._opened_at is not None
        if state is State.OPEN:
            retry_in = max(self._opened_at + self._reset - self._clock(), 0.0)
            detail = f"next probe in {retry_in:.1f}s"
        else:
            retry_in = 0.0
            detail = "a probe call is in flight"
        return CircuitOpen(
            f"model {label} not called: the circuit breaker for {self.key} is open after"
            f" repeated transient failures ({detail})",
            key=self.key,
            retry_in=retry_in,
        )

    def succeeded(self, ticket: Ticket) -> None:
        with self._lock:
            if ticket.probe:
                self._close("probe succeeded")
            elif ticket.generation == self._generation and self._opened_at is None:
                self._failures = 0

    def failed(self, ticket: Ticket, spec: BreakerSpec) -> None:
        """A transient provider failure of an admitted call."""
        with self._lock:
            if ticket.probe:
                self._open("probe failed")
            elif ticket.generation == self._generation and self._opened_at is None:
                self._failures += 1
                if self._failures >= spec.failures:
                    self._open(f"{self._failures} transient failures in a row")

    def released(self, ticket: Ticket) -> None:
        """An admitted call ended without a verdict on the provider."""
        if ticket.probe:
            with self._lock:
                if ticket.generation == self._generation:
                    self._probing = False

    def _open(self, why: str) -> None:
        self._opened_at = self._clock()
        self._probing = False
        self._failures = 0
        self._generation += 1
        logger.warning("circuit for %s opened (%s) for %gs", self.key, why, self._reset)

    def _close(self, why: str) -> None:
        self._opened_at = None
        self._probing = False
        self._failures = 0
        self._generation += 1
        logger.info("circuit for %s closed (%s)", self.key, why)


class Breakers:
    """The breakers of this process, one per provider key, created on first use."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._breakers: dict[str, CircuitBreaker] = {}

    def for_label(self, label: str) -> CircuitBreaker:
        key = key_of(label)
        with self._lock:
            breaker = self._breakers.get(key)
            if breaker is None:
                breaker = self._breakers[key] = CircuitBreaker(key, clock=self._clock)
            return breaker

    def states(self) -> dict[str, str]:
        """Each known key's state (`closed`, `open`, `half_open`), e.g. for metrics."""
        with self._lock:
            breakers = list(self._breakers.values())
        return {b.key: b.state().value for b in breakers}


class BreakerAgent(Agent):
    """An agent behind its provider's circuit breaker."""

    def __init__(
        self, inner: Agent, *, breaker: CircuitBreaker, label: str, spec: BreakerSpec
    ) -> None:
        self._inner = inner
        self._breaker = breaker
        self._label = label
        self._spec = spec

    def available(self) -> bool:
        """Whether a call would go through now."""
        return self._breaker.available(self._spec)

    async def run(self, request: StepRequest, context: StepContext) -> StepResult:
        ticket = self._breaker.admit(self._spec, self._label)
        try:
            result = await self._inner.run(request, context)
        except ProviderError as exc:
            if exc.transient:
                self._breaker.failed(ticket, self._spec)
            else:
                self._breaker.released(ticket)
            raise
        except BaseException:
            self._breaker.released(ticket)
            raise
        self._breaker.succeeded(ticket)
        return result


def behind_breaker(inner: Agent, *, breakers: Breakers, label: str, spec: BreakerSpec) -> Agent:
    """`inner` (one model's agent) behind the breaker of the model's provider."""
    return BreakerAgent(inner, breaker=breakers.for_label(label), label=label, spec=spec)
