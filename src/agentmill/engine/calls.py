"""One durable agent call: checkpoint lookup, attempts with backoff and jitter, timeout.

A call whose checkpoint says it succeeded is never run again. Its result is committed to
the database before anything downstream can see it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from agentmill.agents.base import Agent, StepRequest, StepResult
from agentmill.agents.clock import StepClock, timing
from agentmill.engine.drain import Drain
from agentmill.engine.events import RunEmitter, StepEvents, step_events
from agentmill.errors import (
    PolicyRefusal,
    ProviderError,
    StepFailed,
    StepTimeout,
    UserError,
    shown_error,
)
from agentmill.logs import current_step
from agentmill.policy.retry import AttemptNote, noting, retry_delay, retryable
from agentmill.store import StepRecord, StepStatus, Store

__all__ = ["SAVED", "SPENT", "CallSpec", "run_call"]

SPENT = "spent"
"""What an agent notes about an attempt that failed after paying for model requests (an
agent loop): `{"model", "usage", "cost_usd"}`, recorded on the failed step and counted."""

SAVED = "saved"
"""The key of a call's `details` holding what its agent saved for a later attempt."""

logger = logging.getLogger("agentmill.engine")


@dataclass(frozen=True, kw_only=True)
class CallSpec:
    """What to call and how: the request plus its retry and timeout policy."""

    request: StepRequest
    agent: Agent
    retries: int
    backoff: float
    timeout: float | None
    models: int = 1
    """Models the agent may use (its own plus fallbacks); each gets `retries` retries."""
    agent_name: str | None = None
    """The config's name of the agent, recorded on the step (costs are grouped by it)."""


class _Context:
    """The DurableContext given to an agent: streams text as `step_output` events and keeps
    what the agent saves in the call's RUNNING checkpoint, where a retry finds it. What it
    notes about the attempt goes into `noted`, recorded if the attempt fails."""

    def __init__(
        self,
        emitter: RunEmitter,
        store: Store,
        call: CallSpec,
        *,
        attempt: int,
        started: float,
        saved: dict[str, Any],
        deadline: asyncio.Timeout,
    ) -> None:
        self._emitter = emitter
        self._store = store
        self._call = call
        self._request = call.request
        self._attempt = attempt
        self._started = started
        self._saved = saved
        self._deadline = deadline
        self.noted: dict[str, Any] = {}

    async def emit_text(self, text: str) -> None:
        self._emitter.emit("step_output", step=self._request.key, attempt=self._attempt, text=text)

    async def emit_event(self, kind: str, **data: Any) -> None:
        self._emitter.emit(f"step_{kind}", step=self._request.key, attempt=self._attempt, **data)

    @property
    def saved(self) -> Mapping[str, Any]:
        return self._saved

    async def save(self, **values: Any) -> None:
        self._saved.update(values)
        record = _record(
            self._call,
            StepStatus.RUNNING,
            self._attempt,
            started_at=self._started,
            details={SAVED: dict(self._saved)},
        )
        self._store.journal.put_step(record)
        await self._store.journal.commit()

    def note(self, **details: Any) -> None:
        self.noted.update(details)

    @property
    def timed_out(self) -> bool:
        return self._deadline.expired()


async def run_call(
    call: CallSpec,
    *,
    store: Store,
    emitter: RunEmitter,
    previous: StepRecord | None,
    drain: Drain | None = None,
) -> StepRecord:
    """Run a call to success or final failure; return its committed checkpoint.

    Every attempt is one model request. A transient failure is retried on the same model
    after a backoff (or the provider's Retry-After); when a fallback chain moves on to its
    next model (retries exhausted, or an open circuit), the next attempt starts at once.

    An attempt cut off by an interruption (Ctrl-C, a shutdown) is not a failure: a resumed
    run gives the call its full retries again. While `drain` is draining, a transient
    failure (maybe caused by the shutdown itself) waits for the interruption rather than
    starting a retry.
    """
    if previous is not None and previous.status is StepStatus.SUCCEEDED:
        return previous
    earlier_attempts = previous.attempt if previous is not None else 0
    attempt = earlier_attempts
    max_attempts = earlier_attempts + (call.retries + 1) * call.models
    retry_number = 0
    saved = _saved(previous)
    while True:
        attempt += 1
        note = AttemptNote(retries=call.retries, first=attempt == earlier_attempts + 1)
        noted: dict[str, Any] = {}
        record, error = await _attempt(
            call, attempt, note, saved=saved, noted=noted, store=store, emitter=emitter
        )
        if record is not None:
            return record
        assert error is not None
        if note.progressed:
            # An agent loop got further: the request it failed at gets its full retries.
            max_attempts = attempt - 1 + (call.retries + 1) * call.models
            retry_number = 0
        if drain is not None and drain.draining and retryable(error):
            logger.info("attempt %d ended while shutting down, not retried: %s", attempt, error)
            await drain.wait_interrupted()
        if attempt >= max_attempts or not retryable(error):
            return await _fail(
                call,
                attempt,
                error,
                note,
                attempts=attempt - earlier_attempts,
                kept={**noted, **({SAVED: dict(saved)} if saved else {})},
                store=store,
                emitter=emitter,
            )
        retry_number = 0 if note.switching else retry_number + 1
        await _before_retry(
            call, attempt, error, note, retry_number, details=noted, emitter=emitter
        )


async def _before_retry(
    call: CallSpec,
    attempt: int,
    error: Exception,
    note: AttemptNote,
    retry_number: int,
    *,
    details: dict[str, Any],
    emitter: RunEmitter,
) -> None:
    """Say that `attempt` failed (with what its agent noted about it) and wait before the
    next one (at once on another model)."""
    if note.switching:
        delay = 0.0
    else:
        delay = retry_delay(error, base=call.backoff, retry_number=retry_number)
    logger.info("attempt %d failed, retrying in %.2fs: %s", attempt, delay, error)
    emitter.emit(
        "step_retrying",
        step=call.request.key,
        attempt=attempt,
        error=str(error),
        error_kind=_kind(error),
        delay=round(delay, 3),
        **({"next_model": note.next_model} if note.next_model else {}),
        **({"details": details} if details else {}),
    )
    await asyncio.sleep(delay)


def _saved(previous: StepRecord | None) -> dict[str, Any]:
    """What the agent saved during earlier attempts (kept through a crash or a failure)."""
    details = (previous.details if previous is not None else None) or {}
    return dict(details.get(SAVED) or {})


async def _attempt(
    call: CallSpec,
    attempt: int,
    note: AttemptNote,
    *,
    saved: dict[str, Any],
    noted: dict[str, Any],
    store: Store,
    emitter: RunEmitter,
) -> tuple[StepRecord | None, Exception | None]:
    """One attempt: its committed record on success, else its error (and what the agent
    noted about it, in `noted`)."""
    request = call.request
    current_step.set(request.key)
    started = time.time()
    kept = {SAVED: dict(saved)} if saved else None
    store.journal.put_step(
        _record(call, StepStatus.RUNNING, attempt, started_at=started, details=kept)
    )
    if attempt > 1:
        # Clients drop the partial output of earlier attempts of this step.
        emitter.emit("step_started", step=request.key, attempt=attempt, supersedes=attempt - 1)
    else:
        emitter.emit("step_started", step=request.key, attempt=attempt)
    deadline = asyncio.timeout(call.timeout)
    clock = StepClock(
        deadline,
        on_wait=lambda what: emitter.emit(
            "step_waiting", step=request.key, attempt=attempt, waiting_for=what
        ),
    )
    context = _Context(
        emitter, store, call, attempt=attempt, started=started, saved=saved, deadline=deadline
    )
    attempt_request = replace(request, attempt=attempt)
    try:
        async with deadline:
            events = StepEvents(emitter, request.key, attempt)
            with noting(note), timing(clock), step_events(events):
                result = await call.agent.run(attempt_request, context)
    except TimeoutError as exc:
        noted.update(context.noted)
        if deadline.expired() and call.timeout is not None:
            return None, StepTimeout(request.key, call.timeout)
        return None, exc
    except Exception as exc:  # noqa: BLE001 - any agent failure is recorded and maybe retried
        noted.update(context.noted)
        # What the step's error, its events and the API show: never an unexpected
        # exception's own text (SQL, parameters), which goes to the log with an id.
        return None, shown_error(exc, log=logger, doing=f"step {request.key} attempt {attempt}")
    return await _succeed(call, attempt, started, result, store=store, emitter=emitter), None


async def _succeed(
    call: CallSpec,
    attempt: int,
    started: float,
    result: StepResult,
    *,
    store: Store,
    emitter: RunEmitter,
) -> StepRecord:
    request = call.request
    finished = time.time()
    record = _record(
        call,
        StepStatus.SUCCEEDED,
        attempt,
        started_at=started,
        finished_at=finished,
        output=result.output,
        usage=result.usage.to_json(),
        model=result.model,
        cost_usd=result.cost_usd,
        details=result.details or None,
    )
    store.journal.put_step(record)
    emitter.emit(
        "step_finished",
        step=request.key,
        attempt=attempt,
        elapsed=round(finished - started, 4),
        usage=result.usage.to_json(),
        model=result.model,
        cost_usd=result.cost_usd,
        **({"details": result.details} if result.details else {}),
    )
    await store.journal.commit()
    return record


async def _fail(
    call: CallSpec,
    attempt: int,
    error: Exception,
    note: AttemptNote,
    *,
    attempts: int,
    kept: dict[str, Any],
    store: Store,
    emitter: RunEmitter,
) -> StepRecord:
    """Record the final failure, with the policies' details and `kept`: what the agent
    noted about its last attempt and what it saved for a later one. `attempts`: how many
    were made in this execution (an earlier one's interrupted attempt is no failure)."""
    request = call.request
    message = str(StepFailed(request.key, _describe(error), attempts=attempts))
    kept = dict(kept)
    spent: dict[str, Any] = kept.pop(SPENT, None) or {}
    details = {**note.details, **kept} or None
    record = _record(
        call,
        StepStatus.FAILED,
        attempt,
        finished_at=time.time(),
        error=message,
        details=details,
        # What the failed call's finished model requests cost (an agent loop): counted.
        model=spent.get("model"),
        usage=spent.get("usage"),
        cost_usd=spent.get("cost_usd"),
    )
    store.journal.put_step(record)
    emitter.emit(
        "step_failed",
        step=request.key,
        attempt=attempt,
        error=message,
        error_kind=_kind(error),
        **({"details": details} if details else {}),
    )
    await store.journal.commit()
    return record


def _record(call: CallSpec, status: StepStatus, attempt: int, **values: object) -> StepRecord:
    request = call.request
    return StepRecord(
        run_id=request.run_id,
        key=request.key,
        step_id=request.step_id,
        item_index=request.index,
        status=status,
        attempt=attempt,
        agent=call.agent_name,
        **values,  # type: ignore[arg-type]
    )


def _describe(error: Exception) -> str:
    if isinstance(error, StepTimeout):
        return f"timed out after {error.seconds:g}s"
    return str(error) or type(error).__name__


def _kind(error: Exception) -> str:
    """A label for metrics: provider, timeout, policy, user (config or key) or other."""
    if isinstance(error, ProviderError):
        return "provider"
    if isinstance(error, PolicyRefusal):
        return "policy"
    if isinstance(error, StepTimeout):
        return "timeout"
    if isinstance(error, UserError):
        return "user"
    return "other"
