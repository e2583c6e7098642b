"""/v1 run events: JSON history, a live Server-Sent Events stream, and a WebSocket.

Both streams send history first, then live events, and end when the run has ended for
good: after its last `run_finished` / `run_interrupted`, once nothing will continue it (a
resumed run goes on after one; a served run whose worker died or stopped stays open, with
keepalives, until another worker adopts it and goes on). They check the run belongs to
the caller's tenant before anything is sent, hold one of the key's stream slots while
open, and end early when the server starts shutting down (clients reconnect from the last
sequence number they saw).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response, WebSocket
from pydantic import BaseModel, Field

from agentmill.engine.liveness import run_settled
from agentmill.errors import AgentmillError, NotFoundError
from agentmill.server import sse
from agentmill.server.auth import Principal, Viewer
from agentmill.server.problems import PROBLEM_RESPONSES, ApiProblem
from agentmill.server.schemas import RunId
from agentmill.server.services import Services, services
from agentmill.store import EventRecord, RunRecord
from agentmill.store.keys import Role

__all__ = ["WS_CLOSE_CODES", "EventOut", "EventPage", "router", "stream_events"]

router = APIRouter(tags=["events"])

WS_CLOSE_CODES = {
    1000: "the run ended for good (after its last run_finished or run_interrupted)",
    1001: "the server is shutting down: reconnect with ?after=<last seq>",
    1008: "no valid API key, or its role may not read events",
    4404: "no such run for this key's tenant",
    4422: "`after` is not an integer >= 0",
    4429: "too many open streams (or requests) for this API key",
    4503: "the server is shutting down and takes no new streams",
}
"""WebSocket close codes and what they mean (also in docs/events.md)."""


class EventOut(BaseModel):
    """One event of a run; `(step, attempt, seq)` identify it."""

    run_id: str
    seq: int = Field(description="1, 2, 3... per run, without gaps")
    kind: str = Field(description="run_started, step_started, step_output, ... (docs/events.md)")
    step: str | None = Field(description="The step key (`step` or `step[index]`), if any")
    attempt: int = Field(description="Which attempt of the step emitted it (0 for run events)")
    data: dict[str, Any]
    ts: float = Field(description="Epoch seconds when it was emitted")

    @classmethod
    def from_record(cls, event: EventRecord) -> EventOut:
        return cls(**event.to_json())


class EventPage(BaseModel):
    items: list[EventOut]
    last_seq: int = Field(
        description="The seq of the last item (`after` when there are none): "
        "pass it as `after` to get what comes next"
    )


_SSE_EXAMPLE = (
    'id: 1\nevent: run_started\ndata: {"run_id":"3f2a...","seq":1,"kind":"run_started",'
    '"step":null,"attempt":0,"data":{"workflow":"review","reused":[]},"ts":1735000000.0}\n\n'
)

_STREAM_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "JSON history, or with `Accept: text/event-stream` a live stream: "
        "one frame per event (`id: <seq>`, `event: <kind>`, `data: <event JSON>`), "
        "`: keepalive` comments while idle",
        "content": {sse.MEDIA_TYPE: {"schema": {"type": "string"}, "example": _SSE_EXAMPLE}},
    },
    204: {
        "description": "Event stream only: the run has ended and nothing came after "
        "Last-Event-ID (an EventSource stops reconnecting on 204)"
    },
    503: PROBLEM_RESPONSES[409] | {"description": "The server is shutting down"},
}


_WS_DESCRIPTION = (
    "**WebSocket equivalent**: `GET /v1/runs/{run_id}/events/ws?after=N` with "
    "`Authorization: Bearer <key>` on the handshake; each event is one JSON text message. "
    "Close codes: "
    + "; ".join(f"`{code}` {meaning}" for code, meaning in WS_CLOSE_CODES.items())
    + "."
)


@router.get(
    "/runs/{run_id}/events",
    summary="A run's events: JSON history, or a live Server-Sent Events stream",
    response_model=EventPage,
    responses=_STREAM_RESPONSES,
    description=(
        "With `Accept: text/event-stream`: the events after `Last-Event-ID` (or `after`), "
        "history first, then live, ending once the run has ended for good (after its last "
        "`run_finished` / `run_interrupted`: a resumed run goes on after one, and a run "
        "whose worker died stays open until another worker adopts it); "
        "`: keepalive` comments every 15 s while idle; the stream ends early when the "
        "server shuts down (reconnect with `Last-Event-ID`). Otherwise the recorded events "
        "after `after` as JSON.\n\n" + _WS_DESCRIPTION
    ),
)
async def run_events(
    request: Request,
    run_id: RunId,
    principal: Viewer,
    after: Annotated[
        int, Query(ge=0, le=sse.MAX_SEQ, description="Only events with a higher seq")
    ] = 0,
    limit: Annotated[
        int | None, Query(ge=1, le=10_000, description="JSON only: at most this many events")
    ] = None,
    last_event_id: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID",
            max_length=40,
            description="Event stream only: resume after this seq (takes precedence over after)",
        ),
    ] = None,
) -> Response | EventPage:
    """Stream or list a run's events (see the description above)."""
    app = services(request)
    run = await app.engine.store.get_run(run_id, tenant=principal.tenant)
    if sse.MEDIA_TYPE not in request.headers.get("accept", "").lower():
        return await _history(app, run_id, after=after, limit=limit)
    start = sse.resume_point(last_event_id, after)
    return await stream_events(app, run, start, key_id=principal.key_id)


async def stream_events(
    app: Services,
    run: RunRecord,
    start: int,
    *,
    key_id: str,
    still_allowed: Callable[[], Awaitable[bool]] | None = None,
) -> Response:
    """The event stream of `run` after `start` (or 204 when it has ended for good and there
    is nothing more), holding one of `key_id`'s stream slots while open; 503 when the
    server is shutting down. The dashboard's run page streams through it too, ended by
    `still_allowed` (asked every keepalive interval) once its session has ended."""
    _refuse_when_stopping(app)
    if await _nothing_more(app, run, start):
        return Response(status_code=204, headers={"Cache-Control": "no-cache"})
    app.streams.acquire(key_id)
    frames = _frames(app, run.id, start, still_allowed)
    return sse.EventStreamResponse(frames, on_close=lambda: app.streams.release(key_id))


async def _history(app: Services, run_id: str, *, after: int, limit: int | None) -> EventPage:
    store = app.engine.store
    await store.journal.commit()  # events of runs executing here may still be queued
    found = await store.events(run_id, after=after, limit=limit)
    return EventPage(
        items=[EventOut.from_record(event) for event in found],
        last_seq=found[-1].seq if found else after,
    )


async def _nothing_more(app: Services, run: RunRecord, after: int) -> bool:
    """Whether the run has ended for good and the client already saw its last event.
    (A served run that was interrupted or lost its worker is continued by another worker.)"""
    if not run_settled(run, heartbeat_interval=app.engine.settings.heartbeat_interval):
        return False
    return await app.engine.store.last_seq(run.id) <= after


def _refuse_when_stopping(app: Services) -> None:
    if app.shutting_down.is_set():
        raise ApiProblem(
            503,
            "shutting-down",
            "the server is shutting down; reconnect in a moment (to it or another server)",
            headers={"Retry-After": "2"},
        )


async def _frames(
    app: Services, run_id: str, after: int, still_allowed: Callable[[], Awaitable[bool]] | None
) -> AsyncIterator[bytes]:
    events = app.engine.follow(run_id, after=after)
    tick = sse.KEEPALIVE_SECONDS
    stream = sse.until_stopped(events, stop=app.shutting_down, tick=tick)
    checked = time.monotonic()
    async with contextlib.aclosing(stream):
        async for batch in stream:
            if still_allowed is not None and time.monotonic() - checked >= tick:
                if not await still_allowed():
                    return
                checked = time.monotonic()
            yield b"".join(map(sse.event_frame, batch)) if batch else sse.KEEPALIVE_FRAME
    if app.shutting_down.is_set():
        yield sse.SHUTDOWN_FRAME


# WebSocket


@router.websocket("/runs/{run_id}/events/ws", name="run_events_ws")
async def run_events_ws(websocket: WebSocket, run_id: str) -> None:
    """The same events as the SSE stream, one JSON text message each; see WS_CLOSE_CODES.

    Authenticate with `Authorization: Bearer <key>` on the handshake; `?after=N` resumes.
    """
    app: Services = websocket.app.state.services
    try:
        principal = await _ws_principal(websocket, app)
        after = sse.sequence_number(websocket.query_params.get("after", "0"), "after")
        await app.engine.store.get_run(run_id[:64], tenant=principal.tenant)
        _refuse_when_stopping(app)
        app.streams.acquire(principal.key_id)
    except (ApiProblem, NotFoundError) as exc:
        await _ws_refuse(websocket, exc)
        return
    try:
        await websocket.accept()
        await _ws_stream(websocket, app, run_id, after)
    finally:
        app.streams.release(principal.key_id)


async def _ws_principal(websocket: WebSocket, app: Services) -> Principal:
    """The key on the handshake, checked like an HTTP request's (viewer or above)."""
    scheme, _, token = websocket.headers.get("authorization", "").partition(" ")
    key = None
    if scheme.lower() == "bearer" and token.strip():
        key = await app.keys.verify(token.strip())
    if key is None or not key.role.allows(Role.VIEWER):
        raise ApiProblem(401, "unauthorized", "a valid API key is required")
    app.limiter.check(key.id)
    return Principal(key_id=key.id, tenant=key.tenant, role=key.role)


async def _ws_refuse(websocket: WebSocket, exc: AgentmillError | ApiProblem) -> None:
    """Accept, then close with a code saying why (a refused handshake carries no reason)."""
    status = exc.status if isinstance(exc, ApiProblem) else 404
    code = 1008 if status in (401, 403) else 4000 + status
    await websocket.accept()
    await websocket.close(code=code, reason=str(exc)[:120])


async def _ws_stream(websocket: WebSocket, app: Services, run_id: str, after: int) -> None:
    """Send events until the run ends (1000) or the server stops (1001). A client that
    leaves ends it too, noticed even while no event is due."""
    stop = asyncio.Event()
    listening = asyncio.ensure_future(_until_client_leaves(websocket, app, stop))
    try:
        stream = sse.until_stopped(app.engine.follow(run_id, after=after), stop=stop)
        async with contextlib.aclosing(stream):
            async for batch in stream:
                for event in batch:
                    await websocket.send_text(sse.event_json(event))
        if not (listening.done() and listening.result()):
            await websocket.close(code=1001 if app.shutting_down.is_set() else 1000)
    finally:
        listening.cancel()


async def _until_client_leaves(websocket: WebSocket, app: Services, stop: asyncio.Event) -> bool:
    """Read (and ignore) client messages until it disconnects (True) or the server starts
    stopping (False); either way set `stop`."""
    stopping = asyncio.ensure_future(app.shutting_down.wait())
    try:
        while True:
            receiving = asyncio.ensure_future(websocket.receive())
            await asyncio.wait({receiving, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not receiving.done():
                receiving.cancel()
                return False
            if receiving.result()["type"] == "websocket.disconnect":
                return True
    finally:
        stopping.cancel()
        stop.set()
