"""One durable agent call: checkpoint lookup, attempts with backoff and jitter, timeout.

A call whose checkpoint says it succeeded is never run again. Its result is committed to
the database before anything downstream can see it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass

from agentmill.agents.base import Agent, StepRequest, StepResult
from agentmill.agents.pricing import cost_usd
from agentmill.engine.events import RunEmitter
from agentmill.errors import ProviderError, StepFailed, StepTimeout, UserError
from agentmill.logs import current_step
from agentmill.store import StepRecord, StepStatus, Store

__all__ = ["CallSpec", "run_call"]

logger = logging.getLogger("agentmill.engine")

MAX_BACKOFF = 60.0


@dataclass(frozen=True, kw_only=True)
class CallSpec:
    """What to call and how: the request plus its retry and timeout policy."""

    request: StepRequest
    agent: Agent
    retries: int
    backoff: float
    timeout: float | None


class _Context:
    """The StepContext given to an agent: streams text as `step_output` events."""

    def __init__(self, emitter: RunEmitter, key: str, attempt: int) -> None:
        self._emitter = emitter
        self._key = key
        self._attempt = attempt

    async def emit_text(self, text: str) -> None:
        self._emitter.emit("step_output", step=self._key, attempt=self._attempt, text=text)


async def run_call(
    call: CallSpec, *, store: Store, emitter: RunEmitter, previous: StepRecord | None
) -> StepRecord:
    """Run a call to success or final failure; return its committed checkpoint."""
    if previous is not None and previous.status is StepStatus.SUCCEEDED:
        return previous
    earlier_attempts = previous.attempt if previous is not None else 0
    attempt = earlier_attempts
    max_attempts = earlier_attempts + call.retries + 1
    while True:
        attempt += 1
        record, error = await _attempt(call, attempt, store=store, emitter=emitter)
        if record is not None:
            return record
        assert error is not None
        if attempt >= max_attempts or not _retryable(error):
            return await _fail(call, attempt, error, store=store, emitter=emitter)
        delay = _backoff(call.backoff, retry_number=attempt - earlier_attempts)
        logger.info("attempt %d failed, retrying in %.2fs: %s", attempt, delay, error)
        emitter.emit(
            "step_retrying",
            step=call.request.key,
            attempt=attempt,
            error=str(error),
            error_kind=_kind(error),
            delay=round(delay, 3),
        )
        await asyncio.sleep(delay)


async def _attempt(
    call: CallSpec, attempt: int, *, store: Store, emitter: RunEmitter
) -> tuple[StepRecord | None, Exception | None]:
    request = call.request
    current_step.set(request.key)
    started = time.time()
    store.journal.put_step(_record(request, StepStatus.RUNNING, attempt, started_at=started))
    if attempt > 1:
        # Clients drop the partial output of earlier attempts of this step.
        emitter.emit("step_started", step=request.key, attempt=attempt, supersedes=attempt - 1)
    else:
        emitter.emit("step_started", step=request.key, attempt=attempt)
    context = _Context(emitter, request.key, attempt)
    attempt_request = StepRequest(
        run_id=request.run_id,
        step_id=request.step_id,
        prompt=request.prompt,
        index=request.index,
        attempt=attempt,
    )
    deadline = asyncio.timeout(call.timeout)
    try:
        async with deadline:
            result = await call.agent.run(attempt_request, context)
    except TimeoutError as exc:
        if deadline.expired() and call.timeout is not None:
            return None, StepTimeout(request.key, call.timeout)
        return None, exc
    except Exception as exc:  # noqa: BLE001 - any agent failure is recorded and maybe retried
        return None, exc
    return await _succeed(request, attempt, started, result, store=store, emitter=emitter), None


async def _succeed(
    request: StepRequest,
    attempt: int,
    started: float,
    result: StepResult,
    *,
    store: Store,
    emitter: RunEmitter,
) -> StepRecord:
    finished = time.time()
    record = _record(
        request,
        StepStatus.SUCCEEDED,
        attempt,
        started_at=started,
        finished_at=finished,
        output=result.output,
        usage=result.usage.to_json(),
        model=result.model,
    )
    store.journal.put_step(record)
    emitter.emit(
        "step_finished",
        step=request.key,
        attempt=attempt,
        elapsed=round(finished - started, 4),
        usage=result.usage.to_json(),
        model=result.model,
        cost_usd=cost_usd(result.model, result.usage),
    )
    await store.journal.commit()
    return record


async def _fail(
    call: CallSpec, attempt: int, error: Exception, *, store: Store, emitter: RunEmitter
) -> StepRecord:
    request = call.request
    message = str(StepFailed(request.key, _describe(error), attempts=attempt))
    record = _record(request, StepStatus.FAILED, attempt, finished_at=time.time(), error=message)
    store.journal.put_step(record)
    emitter.emit(
        "step_failed", step=request.key, attempt=attempt, error=message, error_kind=_kind(error)
    )
    await store.journal.commit()
    return record


def _record(request: StepRequest, status: StepStatus, attempt: int, **values: object) -> StepRecord:
    return StepRecord(
        run_id=request.run_id,
        key=request.key,
        step_id=request.step_id,
        item_index=request.index,
        status=status,
        attempt=attempt,
        **values,  # type: ignore[arg-type]
    )


def _retryable(error: Exception) -> bool:
    if isinstance(error, UserError):
        return False
    return not (isinstance(error, ProviderError) and not error.transient)


def _backoff(base: float, *, retry_number: int) -> float:
    """Exponential backoff with equal jitter: half fixed, half random."""
    delay = min(base * 2 ** max(retry_number - 1, 0), MAX_BACKOFF)
    return delay / 2 + random.uniform(0, delay / 2)  # noqa: S311 - jitter, not security


def _describe(error: Exception) -> str:
    if isinstance(error, StepTimeout):
        return f"timed out after {error.seconds:g}s"
    return str(error) or type(error).__name__


def _kind(error: Exception) -> str:
    """A label for metrics: provider, timeout, user (config or key) or other."""
    if isinstance(error, ProviderError):
        return "provider"
    if isinstance(error, StepTimeout):
        return "timeout"
    if isinstance(error, UserError):
        return "user"
    return "other"
