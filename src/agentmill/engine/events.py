"""A run's ordered event log: numbered in memory, published live, persisted by the journal.

Every event carries `(step, attempt, seq)`. A step re-run after a crash gets a higher
attempt, so a reader drops the partial output of the attempt that did not finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import Callable, Generator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from agentmill.store import EventRecord, Store

__all__ = ["EventBus", "RunEmitter", "StepEvents", "current_step_events", "step_events"]


class EventBus:
    """Live subscribers per run, inside one process."""

    def __init__(self) -> None:
        self._subscribers: dict[str, list[asyncio.Queue[EventRecord]]] = defaultdict(list)
        self._listeners: list[Callable[[EventRecord], None]] = []

    def add_listener(self, listener: Callable[[EventRecord], None]) -> None:
        """Call `listener` with every event of every run executing here (e.g. metrics)."""
        self._listeners.append(listener)

    def subscribe(self, run_id: str) -> asyncio.Queue[EventRecord]:
        queue: asyncio.Queue[EventRecord] = asyncio.Queue()
        self._subscribers[run_id].append(queue)
        return queue

    def unsubscribe(self, run_id: str, queue: asyncio.Queue[EventRecord]) -> None:
        queues = self._subscribers.get(run_id, [])
        if queue in queues:
            queues.remove(queue)
        if not queues:
            self._subscribers.pop(run_id, None)

    def publish(self, event: EventRecord) -> None:
        for queue in self._subscribers.get(event.run_id, ()):
            queue.put_nowait(event)
        for listener in self._listeners:
            listener(event)


class RunEmitter:
    """Numbers one run's events, publishes them, and queues them for the database."""

    def __init__(self, run_id: str, store: Store, bus: EventBus, *, last_seq: int) -> None:
        self.run_id = run_id
        self._store = store
        self._bus = bus
        self._seq = last_seq

    def emit(
        self, kind: str, *, step: str | None = None, attempt: int = 0, **data: Any
    ) -> EventRecord:
        event = self._next(kind, step, attempt, data)
        self._store.journal.add_event(event)
        self._bus.publish(event)
        return event

    def emit_final(
        self, kind: str, *, owner: str, run_update: dict[str, Any], **data: Any
    ) -> EventRecord:
        """A run's last event and its final state, in one transaction, if `owner` still owns it."""
        event = self._next(kind, None, 0, data)
        self._store.journal.add_final(event, expected_owner=owner, **run_update)
        self._bus.publish(event)
        return event

    def _next(self, kind: str, step: str | None, attempt: int, data: dict[str, Any]) -> EventRecord:
        self._seq += 1
        event = EventRecord(
            run_id=self.run_id,
            seq=self._seq,
            kind=kind,
            step=step,
            attempt=attempt,
            data=data,
            ts=time.time(),
        )
        return event


@dataclass(frozen=True)
class StepEvents:
    """The events of one attempt of a step, for code deep inside its agent that emits the
    run's own kinds (a tool call waiting for approval emits `approval_requested`)."""

    emitter: RunEmitter
    step: str
    attempt: int

    def emit(self, kind: str, **data: Any) -> EventRecord:
        return self.emitter.emit(kind, step=self.step, attempt=self.attempt, **data)


_step_events: ContextVar[StepEvents | None] = ContextVar("agentmill_step_events", default=None)


def current_step_events() -> StepEvents | None:
    """The events of the attempt being run, if the call runs under the attempt loop."""
    return _step_events.get()


@contextlib.contextmanager
def step_events(events: StepEvents) -> Generator[StepEvents]:
    """Make `events` the current attempt's for the code run inside."""
    token = _step_events.set(events)
    try:
        yield events
    finally:
        _step_events.reset(token)
