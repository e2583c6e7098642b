"""The clock of a step's `timeout`: waiting for something shared is not the step's time.

The attempt loop (`engine/calls.py`) runs each attempt under its timeout and makes a
`StepClock` over it current. An agent that must first wait its turn for a resource other
steps are using (the embedded local model generates for one call at a time) stops the clock
while it waits and starts it again once it has the resource:

    clock = current_clock()
    if clock is not None:
        clock.pause("the local model")     # a `step_waiting` event; the deadline moves away
        ...                                # queued behind other steps
        clock.resume()                     # the rest of the timeout counts from here

Both are called on the event loop's thread. Outside an attempt there is no clock.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Generator
from contextvars import ContextVar

__all__ = ["StepClock", "current_clock", "timing"]


class StepClock:
    """An attempt's deadline that stops while the attempt waits for a shared resource."""

    def __init__(
        self, deadline: asyncio.Timeout, *, on_wait: Callable[[str], object] | None = None
    ) -> None:
        self._deadline = deadline
        self._on_wait = on_wait
        self._paused = 0
        self._left: float | None = None
        """Seconds the attempt had left when the clock stopped (None: no deadline)."""

    @property
    def paused(self) -> bool:
        return self._paused > 0

    def pause(self, waiting_for: str | None = None) -> None:
        """Stop the clock (pauses nest); `waiting_for` names what is awaited, in an event."""
        self._paused += 1
        if waiting_for and self._on_wait is not None:
            self._on_wait(waiting_for)
        if self._paused > 1 or (when := self._deadline.when()) is None:
            return
        self._left = when - asyncio.get_running_loop().time()
        self._reschedule(None)

    def resume(self) -> None:
        """Start the clock again once the last pause ends: the time left then still counts."""
        if self._paused == 0:
            return
        self._paused -= 1
        if self._paused or self._left is None:
            return
        left, self._left = self._left, None
        self._reschedule(asyncio.get_running_loop().time() + max(left, 0.0))

    def _reschedule(self, when: float | None) -> None:
        with contextlib.suppress(RuntimeError):  # the attempt is over or its time is up
            self._deadline.reschedule(when)


_clock: ContextVar[StepClock | None] = ContextVar("agentmill_step_clock", default=None)


def current_clock() -> StepClock | None:
    """The clock of the attempt being run, if the call runs under the attempt loop."""
    return _clock.get()


@contextlib.contextmanager
def timing(clock: StepClock) -> Generator[StepClock]:
    """Make `clock` the current attempt's clock for the code run inside."""
    token = _clock.set(clock)
    try:
        yield clock
    finally:
        _clock.reset(token)
