"""Which failed attempts are retried, and after how long.

Transient provider failures (429, 5xx, timeouts, connection errors) are retried with
exponential backoff and equal jitter; a provider's Retry-After wins over the backoff (capped
at `MAX_RETRY_AFTER`). User errors, 4xx answers, policy refusals (budget, guard) and an open
circuit are never retried: the next attempt would fail the same way.

`AttemptNote` is what the attempt loop (`engine/calls.py`) and a fallback chain
(`policy/fallback.py`) tell each other about one attempt, through `current_note()`: the loop
says how many retries each model gets, the chain says which model the next attempt uses and
what it recorded. Both sides stay usable without the other (no note: no retries per model).
"""

from __future__ import annotations

import random
from collections.abc import Generator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from agentmill.errors import PolicyRefusal, ProviderError, UserError
from agentmill.policy.breaker import CircuitOpen

__all__ = [
    "MAX_BACKOFF",
    "MAX_RETRY_AFTER",
    "AttemptNote",
    "backoff",
    "current_note",
    "noting",
    "retry_delay",
    "retryable",
]

MAX_BACKOFF = 60.0
MAX_RETRY_AFTER = 300.0
"""A Retry-After longer than this is capped: the step's timeout and retries bound the wait."""


def retryable(error: Exception) -> bool:
    """Whether another attempt may succeed."""
    if isinstance(error, UserError | PolicyRefusal | CircuitOpen):
        return False
    return not (isinstance(error, ProviderError) and not error.transient)


def retry_delay(error: Exception, *, base: float, retry_number: int) -> float:
    """Seconds to wait before retry `retry_number` (1 for the first retry of a model)."""
    if isinstance(error, ProviderError) and error.retry_after is not None:
        return min(max(error.retry_after, 0.0), MAX_RETRY_AFTER)
    return backoff(base, retry_number=retry_number)


def backoff(base: float, *, retry_number: int) -> float:
    """Exponential backoff with equal jitter: half fixed, half random.

    `delay = min(base * 2 ** (retry_number - 1), MAX_BACKOFF)`, then a wait drawn uniformly
    from `[delay / 2, delay]`.
    """
    delay = min(base * 2 ** max(retry_number - 1, 0), MAX_BACKOFF)
    return delay / 2 + random.uniform(0, delay / 2)  # noqa: S311 - jitter, not security


@dataclass(kw_only=True)
class AttemptNote:
    """One attempt of a call, as the attempt loop and a fallback chain see it."""

    retries: int
    """Retries each model of the call gets (the step's or agent's `retries`)."""
    first: bool = True
    """The first attempt of this call in this execution: a fallback chain starts over."""
    next_model: str | None = None
    """Set by a fallback chain after a failure: the model the next attempt uses."""
    switching: bool = False
    """The next attempt uses another model: it starts at once, without a delay."""
    details: dict[str, Any] = field(default_factory=dict)
    """What the policies did in a failed attempt (e.g. `fallback`), recorded with the failure."""
    progressed: bool = False
    """Set for an agent loop (`policy/tools.py`) when the attempt finished a model request
    that the next attempt replays instead of making: the failure is then the first of the
    request it failed at, which gets its full retries (`retries` counts per request)."""


_note: ContextVar[AttemptNote | None] = ContextVar("agentmill_attempt_note", default=None)


def current_note() -> AttemptNote | None:
    """The note of the attempt being run, if the call runs under the attempt loop."""
    return _note.get()


@contextmanager
def noting(note: AttemptNote) -> Generator[AttemptNote]:
    """Make `note` the current attempt's note for the code run inside."""
    token = _note.set(note)
    try:
        yield note
    finally:
        _note.reset(token)
