"""Server-Sent Events: frames, keepalives, the resume point, and a response that always
cleans up (closes the event source and releases its stream slot), however the stream ends.

A frame is `id: <seq>`, `event: <kind>`, `data: <event JSON on one line>`. A client that
reconnects sends the last id it saw as `Last-Event-ID` and gets what came after it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from agentmill.server.problems import ApiProblem
from agentmill.store import EventRecord

__all__ = [
    "KEEPALIVE_FRAME",
    "KEEPALIVE_SECONDS",
    "MAX_SEQ",
    "MEDIA_TYPE",
    "SHUTDOWN_FRAME",
    "EventStreamResponse",
    "event_frame",
    "event_json",
    "resume_point",
    "sequence_number",
    "until_stopped",
]

MEDIA_TYPE = "text/event-stream"

KEEPALIVE_SECONDS = 15.0

MAX_SEQ = 2**31 - 1
"""The largest sequence number the event table stores (a 32-bit integer column)."""
"""Seconds of silence after which a comment is sent, so proxies keep the connection open.
Read on every request: tests lower it."""

KEEPALIVE_FRAME = b": keepalive\n\n"
SHUTDOWN_FRAME = b": server shutting down; reconnect with Last-Event-ID\n\n"


def event_json(event: EventRecord) -> str:
    """The event as compact JSON on one line (JSON escapes newlines inside strings)."""
    return event.json_text


def event_frame(event: EventRecord) -> bytes:
    return f"id: {event.seq}\nevent: {event.kind}\ndata: {event_json(event)}\n\n".encode()


def resume_point(last_event_id: str | None, after: int) -> int:
    """The sequence number to continue after: `Last-Event-ID` if sent, else `after`.

    The header wins because a browser reconnecting keeps the original URL (and its
    `?after=`) but sends the newer `Last-Event-ID`. An empty header counts as absent (the
    SSE spec's "no id yet"); anything but an integer >= 0 is refused with 422.
    """
    if last_event_id is not None and last_event_id.strip():
        return sequence_number(last_event_id, "the Last-Event-ID header")
    return after


def sequence_number(raw: str, where: str) -> int:
    """`raw` as an event sequence number (an integer >= 0), or a 422 problem naming `where`."""
    text = raw.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 10 or int(text) > MAX_SEQ:
        raise ApiProblem(
            422,
            "invalid-resume-point",
            f"{where} must be an event sequence number (an integer >= 0), not {raw[:40]!r}",
        )
    return int(text)


class _End:
    """Queued after the last event, or when the stream must stop."""


_END = _End()


async def until_stopped(
    events: AsyncIterator[EventRecord], *, stop: asyncio.Event, tick: float | None = None
) -> AsyncGenerator[list[EventRecord]]:
    """`events` in batches of those already arrived, and an empty batch after every
    `tick` seconds without one.

    Ends when `events` ends or as soon as `stop` is set (even while waiting for the next
    event), and always closes `events`, so the engine's subscription is released. One
    task pulls `events` for the whole stream (no task per event), and batching lets a
    busy stream write several frames at once.
    """
    inbox: asyncio.Queue[EventRecord | _End] = asyncio.Queue()
    pulling = asyncio.ensure_future(_pull(events, inbox))
    watching = asyncio.ensure_future(_end_on(stop, inbox))
    try:
        while True:
            batch = await _next_batch(inbox, tick)
            if batch is None:
                yield []
                continue
            ended = bool(batch) and batch[-1] is _END
            events_only = [item for item in batch if not isinstance(item, _End)]
            if events_only:
                yield events_only
            if ended:
                break
        failure = pulling.exception() if pulling.done() and not pulling.cancelled() else None
        if failure is not None:
            raise failure
    finally:
        pulling.cancel()
        watching.cancel()
        await asyncio.wait([pulling, watching])  # `events` runs its cleanup in its task
        await _aclose(events)


async def _next_batch(
    inbox: asyncio.Queue[EventRecord | _End], tick: float | None
) -> list[EventRecord | _End] | None:
    """What is in the inbox (waiting for something), up to the first end; None after
    `tick` seconds of nothing."""
    if inbox.empty():
        try:
            async with asyncio.timeout(tick):
                first = await inbox.get()
        except TimeoutError:
            return None
    else:
        first = inbox.get_nowait()
    batch = [first]
    while not isinstance(batch[-1], _End) and not inbox.empty():
        batch.append(inbox.get_nowait())
    return batch


async def _pull(
    events: AsyncIterator[EventRecord], inbox: asyncio.Queue[EventRecord | _End]
) -> None:
    try:
        async for event in events:
            inbox.put_nowait(event)
    finally:
        inbox.put_nowait(_END)


async def _end_on(stop: asyncio.Event, inbox: asyncio.Queue[EventRecord | _End]) -> None:
    await stop.wait()
    inbox.put_nowait(_END)


async def _aclose(iterator: AsyncIterator[object]) -> None:
    """Close an async generator (a no-op for one that already finished)."""
    close = getattr(iterator, "aclose", None)
    if close is not None:
        await close()


class EventStreamResponse(StreamingResponse):
    """An SSE response that notices a client leaving even while the stream is idle, then
    closes its frames and calls `on_close` exactly once, whatever ended the stream."""

    def __init__(self, frames: AsyncIterator[bytes], *, on_close: Callable[[], None]) -> None:
        super().__init__(
            frames,
            media_type=MEDIA_TYPE,
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self._frames = frames
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            streaming = asyncio.ensure_future(self.stream_response(send))
            leaving = asyncio.ensure_future(self.listen_for_disconnect(receive))
            try:
                await asyncio.wait({streaming, leaving}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                streaming.cancel()
                leaving.cancel()
                await asyncio.wait({streaming, leaving})
                await _aclose(self._frames)
        finally:
            self._on_close()
        failure = None if streaming.cancelled() else streaming.exception()
        if failure is not None and not isinstance(failure, OSError):  # OSError: client left
            raise failure
