"""Fallback chains: an agent's own model first, then its `fallback` models, in order.

A call moves to the next model when its current one

- is behind an open circuit breaker (at once, in the same attempt, without calling it), or
- failed transiently on all its attempts (`retries + 1` of them, `retries` being the step's),
  including timeouts.

A non-transient failure (a 4xx answer, a budget or guard refusal) fails the call at once:
another model would be sent the same request by the same user. Each attempt calls exactly
one model, so the output a failed attempt streamed is superseded by the next attempt as
usual. The models that failed or were skipped are recorded in the step result under
`details["fallback"]` (`[{"model", "error", "attempts"}]`); `model` is the one that answered.

The chain keeps its place per call key (`step` or `step[index]`), so the calls of a
`foreach` step share one chain without sharing their progress. It starts over with the
first attempt of a call in an execution: a resumed run tries the agent's own model again.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field, replace
from typing import Any

from agentmill.agents.base import Agent, StepContext, StepRequest, StepResult
from agentmill.errors import ProviderError, shown_error
from agentmill.policy.breaker import BreakerAgent, CircuitOpen
from agentmill.policy.retry import AttemptNote, current_note, retryable

__all__ = ["AllModelsFailed", "FallbackAgent", "with_fallbacks"]

logger = logging.getLogger("agentmill.policy")

_MAX_ERROR_CHARS = 300


class AllModelsFailed(ProviderError):
    """Every model of a fallback chain failed or was skipped; names each with its error."""

    def __init__(self, tried: list[dict[str, Any]]) -> None:
        self.tried = tried
        parts = "; ".join(f"{t['model']}: {t['error']}" for t in tried)
        super().__init__(f"all {len(tried)} models failed: {parts}", transient=False)


@dataclass
class _Progress:
    """Where one call stands in the chain."""

    index: int = 0
    failures: int = 0
    """Failed attempts on the current model."""
    tried: list[dict[str, Any]] = field(default_factory=list)


class FallbackAgent(Agent):
    """Calls the first usable model of a chain; see the module docstring."""

    def __init__(self, models: list[Agent], labels: list[str]) -> None:
        if not models or len(models) != len(labels):
            raise ValueError("a fallback chain needs one label per model, and a model")
        self._models = models
        self._labels = labels
        self._progress: dict[str, _Progress] = {}

    async def run(self, request: StepRequest, context: StepContext) -> StepResult:
        note = current_note() or AttemptNote(retries=0)
        if note.first or request.key not in self._progress:
            self._progress[request.key] = _Progress()
        progress = self._progress[request.key]
        while progress.index < len(self._models):
            model, label = self._models[progress.index], self._labels[progress.index]
            try:
                result = await model.run(request, context)
            except CircuitOpen as exc:
                self._leave(progress, _short(exc, label))
                continue
            except asyncio.CancelledError:
                # A step timeout (or a cancelled run): count it like a transient failure.
                self._failed(progress, "timed out", note)
                raise
            except Exception as exc:  # noqa: BLE001 - always raised again, or replaced
                # Recorded in the step's details: an unexpected error only by its id.
                shown = shown_error(exc, log=logger, doing=f"step {request.key} on {label}")
                raise self._failure(request.key, progress, shown, note)  # noqa: B904
            del self._progress[request.key]
            if progress.tried:
                result = replace(result, details={**result.details, "fallback": progress.tried})
            return result
        del self._progress[request.key]
        note.details["fallback"] = progress.tried
        raise AllModelsFailed(progress.tried)

    def _failure(
        self, key: str, progress: _Progress, error: Exception, note: AttemptNote
    ) -> Exception:
        """The error to raise for a failed model call, after moving the chain on."""
        if not retryable(error):
            del self._progress[key]
            if not progress.tried:
                return error
            note.details["fallback"] = progress.tried
            if isinstance(error, ProviderError):
                after = ", ".join(t["model"] for t in progress.tried)
                wrapped = ProviderError(
                    f"{error} (after falling back from {after})", transient=False
                )
                wrapped.__cause__ = error
                return wrapped
            return error
        self._failed(progress, _short(error, self._labels[progress.index]), note)
        if progress.index >= len(self._models):
            del self._progress[key]
            note.details["fallback"] = progress.tried
            final = AllModelsFailed(progress.tried)
            final.__cause__ = error
            return final
        return error

    def _failed(self, progress: _Progress, error: str, note: AttemptNote) -> None:
        """Count a transient failure of the current model and say what the next attempt uses."""
        progress.failures += 1
        before = progress.index
        if progress.failures > note.retries:
            self._leave(progress, error)
        while progress.index < len(self._models) and not _available(self._models[progress.index]):
            # Its breaker is open (maybe by this very failure): no point waiting to retry it.
            self._leave(progress, f"{error}; circuit open" if progress.failures else "circuit open")
        if progress.tried:
            note.details["fallback"] = progress.tried
        note.switching = progress.index != before
        note.next_model = (
            self._labels[progress.index] if progress.index < len(self._models) else None
        )

    def _leave(self, progress: _Progress, error: str) -> None:
        progress.tried.append(
            {
                "model": self._labels[progress.index],
                "error": error,
                "attempts": progress.failures,
            }
        )
        progress.index += 1
        progress.failures = 0


def _available(model: Agent) -> bool:
    return model.available() if isinstance(model, BreakerAgent) else True


def _short(error: Exception, label: str) -> str:
    """The error's text without the `model <label> ` prefix the details already name."""
    text = str(error) or type(error).__name__
    text = text.removeprefix(f"model {label} ")
    if len(text) > _MAX_ERROR_CHARS:
        text = text[: _MAX_ERROR_CHARS - 1] + "…"
    return text


def with_fallbacks(models: list[Agent], labels: list[str]) -> Agent:
    """One agent over `models` (the agent's own first): the model itself when alone."""
    if len(models) == 1:
        return models[0]
    return FallbackAgent(models, labels)
