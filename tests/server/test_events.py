"""Run events over HTTP: JSON history, Server-Sent Events and WebSocket streams.

Finished-run cases go through httpx's ASGITransport (it buffers whole responses); live
streaming, disconnects, caps and shutdown go through a real uvicorn server on the test's
event loop, serving the same app.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, cast

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosedError

from agentmill.server import sse
from agentmill.server.services import Services
from agentmill.store import EventRecord
from tests.server.conftest import Api

SSE = {"Accept": "text/event-stream"}


@dataclass(frozen=True)
class Frame:
    id: int
    event: str
    data: dict[str, Any]


async def parse_frames(lines: AsyncIterator[str]) -> AsyncIterator[Frame]:
    """SSE frames from response lines (comments skipped)."""
    fields: dict[str, str] = {}
    async for line in lines:
        if not line:
            if fields:
                yield Frame(int(fields["id"]), fields["event"], json.loads(fields["data"]))
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            fields[name] = value


class FrameReader:
    """Reads a response's frames in parts; keep it referenced while the stream should
    stay open (a dropped line iterator is finalized, which closes the connection)."""

    def __init__(self, response: httpx.Response) -> None:
        self._frames = parse_frames(response.aiter_lines())

    async def take(self, limit: int | None = None) -> list[Frame]:
        """Frames until the stream ends, or the next `limit` of them."""
        found: list[Frame] = []
        if limit == 0:
            return found
        async for frame in self._frames:
            found.append(frame)
            if len(found) == limit:
                break
        return found


async def read_frames(response: httpx.Response) -> list[Frame]:
    """Every frame until the stream ends."""
    return await FrameReader(response).take()


async def get(
    api: Api,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    tenant: str = "acme",
    role: str = "operator",
    params: dict[str, int] | None = None,
) -> httpx.Response:
    """A GET through the in-process app with this tenant's key and extra headers."""
    merged = {**api.auth(tenant, role), **(headers or {})}
    return await api.client.get(path, headers=merged, params=params)


def services_of(api: Api) -> Services:
    found: Services = cast(FastAPI, api.app).state.services
    return found


async def start_run(api: Api, topic: str = "hello", tenant: str = "acme") -> str:
    response = await api.post(
        "/v1/runs", tenant=tenant, json={"workflow": "echo", "inputs": {"topic": topic}}
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def finished_run(api: Api) -> str:
    run_id = await start_run(api)
    await services_of(api).engine.wait(run_id)
    return run_id


def assert_complete(frames: list[Frame], *, first: int = 1) -> None:
    """Sequence numbers from `first` up without gaps or repeats, ending with the run."""
    assert [f.id for f in frames] == list(range(first, first + len(frames)))
    assert all(f.data["seq"] == f.id and f.data["kind"] == f.event for f in frames)
    assert frames[-1].event == "run_finished"


@pytest.fixture
async def base_url(api: Api) -> AsyncIterator[str]:
    """A real HTTP server on a free port serving the `api` app (already started)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        cast(FastAPI, api.app),
        lifespan="off",
        log_config=None,
        ws="websockets-sansio",
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        assert not serving.done(), serving.exception()
        await asyncio.sleep(0.01)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    services_of(api).shutting_down.set()  # open streams end, as on a real shutdown
    server.should_exit = True
    await serving


@pytest.fixture
async def http(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        yield client


def test_a_frame_keeps_multi_line_text_on_one_data_line() -> None:
    event = EventRecord(
        run_id="r", seq=3, kind="step_output", step="s", attempt=1, data={"text": "a\nb\r"}, ts=1.0
    )
    frame = sse.event_frame(event).decode()
    assert frame.endswith("\n\n")
    lines = frame.removesuffix("\n\n").split("\n")
    assert lines[:2] == ["id: 3", "event: step_output"]
    assert len(lines) == 3
    assert json.loads(lines[2].removeprefix("data: ")) == event.to_json()


# history and finished runs (in-process)


async def test_a_finished_runs_stream_is_its_whole_history_then_ends(api: Api) -> None:
    run_id = await finished_run(api)
    response = await get(api, f"/v1/runs/{run_id}/events", role="viewer", headers=SSE)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    frames = await read_frames(response)
    assert_complete(frames)
    assert frames[0].event == "run_started"
    assert "".join(f.data["data"]["text"] for f in frames if f.event == "step_output") == (
        "echo: draft hello" + "echo: polish echo: draft hello"
    )
    history = (await api.get(f"/v1/runs/{run_id}/events")).json()
    assert history["items"] == [f.data for f in frames]
    assert history["last_seq"] == frames[-1].id


async def test_json_history_pages_with_after_and_limit(api: Api) -> None:
    run_id = await finished_run(api)
    everything = (await api.get(f"/v1/runs/{run_id}/events")).json()["items"]
    page = (await get(api, f"/v1/runs/{run_id}/events", params={"after": 2, "limit": 3})).json()
    assert [e["seq"] for e in page["items"]] == [3, 4, 5]
    assert page["last_seq"] == 5
    rest = (await get(api, f"/v1/runs/{run_id}/events", params={"after": 5})).json()
    assert page["items"] + rest["items"] == everything[2:]
    beyond = (await get(api, f"/v1/runs/{run_id}/events", params={"after": 999})).json()
    assert beyond == {"items": [], "last_seq": 999}


async def test_resuming_a_finished_stream_after_its_last_event_answers_204(api: Api) -> None:
    run_id = await finished_run(api)
    last = (await api.get(f"/v1/runs/{run_id}/events")).json()["last_seq"]
    headers = {**SSE, "Last-Event-ID": str(last)}
    assert (await get(api, f"/v1/runs/{run_id}/events", headers=headers)).status_code == 204
    headers["Last-Event-ID"] = str(last - 1)
    response = await get(api, f"/v1/runs/{run_id}/events", headers=headers)
    assert [f.event for f in await read_frames(response)] == ["run_finished"]


async def test_last_event_id_wins_over_after(api: Api) -> None:
    run_id = await finished_run(api)
    headers = {**SSE, "Last-Event-ID": "4"}
    response = await get(api, f"/v1/runs/{run_id}/events", params={"after": 1}, headers=headers)
    frames = await read_frames(response)
    assert_complete(frames, first=5)


@pytest.mark.parametrize("bad", ["-1", "abc", "1.5", "1e3"])
async def test_a_bad_last_event_id_is_a_client_error(api: Api, bad: str) -> None:
    run_id = await finished_run(api)
    headers = {**SSE, "Last-Event-ID": bad}
    response = await get(api, f"/v1/runs/{run_id}/events", headers=headers)
    assert response.status_code == 422
    assert response.json()["type"] == "urn:agentmill:problem:invalid-resume-point"
    assert (await api.get(f"/v1/runs/{run_id}/events?after=-1")).status_code == 422


async def test_another_tenants_run_is_not_found(api: Api) -> None:
    run_id = await finished_run(api)
    for headers in (SSE, {}):
        response = await get(api, f"/v1/runs/{run_id}/events", tenant="globex", headers=headers)
        assert response.status_code == 404
    assert (await api.client.get(f"/v1/runs/{run_id}/events", headers=SSE)).status_code == 401


async def test_the_openapi_documents_the_event_stream(api: Api) -> None:
    spec = (await api.client.get("/openapi.json")).json()
    route = spec["paths"]["/v1/runs/{run_id}/events"]["get"]
    content = route["responses"]["200"]["content"]
    assert content["text/event-stream"]["schema"] == {"type": "string"}
    assert "application/json" in content
    assert "`4404` no such run" in route["description"]  # the WebSocket's close codes


# live streams (real server)


async def test_a_late_subscriber_gets_history_then_live(api: Api, http: httpx.AsyncClient) -> None:
    api.model.latency = 0.2
    run_id = await start_run(api)
    async for event in services_of(api).engine.follow(run_id):
        if event.kind == "step_finished":
            break  # the first step is done, the second not yet
    async with http.stream(
        "GET", f"/v1/runs/{run_id}/events", headers={**SSE, **api.auth(role="viewer")}
    ) as response:
        assert response.status_code == 200
        frames = await read_frames(response)
    assert_complete(frames)
    assert [f.data["step"] for f in frames if f.event == "step_finished"] == ["draft", "polish"]


async def test_reconnecting_with_last_event_id_misses_and_repeats_nothing(
    api: Api, http: httpx.AsyncClient
) -> None:
    api.model.latency = 0.2
    run_id = await start_run(api)
    url = f"/v1/runs/{run_id}/events"
    async with http.stream("GET", url, headers={**SSE, **api.auth()}) as response:
        before = await FrameReader(response).take(3)
    assert "run_finished" not in [f.event for f in before]  # disconnected mid-run
    resume = {**SSE, **api.auth(), "Last-Event-ID": str(before[-1].id)}
    async with http.stream("GET", url, headers=resume) as response:
        after = await read_frames(response)
    assert_complete(before + after)


async def test_idle_streams_get_keepalive_comments(
    api: Api, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sse, "KEEPALIVE_SECONDS", 0.05)
    api.model.latency = 0.5
    run_id = await start_run(api)
    url = f"/v1/runs/{run_id}/events"
    async with http.stream("GET", url, headers={**SSE, **api.auth()}) as response:
        async for line in response.aiter_lines():
            if line == ": keepalive":
                break


async def test_the_stream_cap_refuses_then_frees_a_slot_on_disconnect(
    api: Api, http: httpx.AsyncClient, base_url: str
) -> None:
    services_of(api).streams.limit = 1
    api.model.latency = 0.5
    run_id = await start_run(api)
    url = f"/v1/runs/{run_id}/events"
    headers = {**SSE, **api.auth()}
    async with http.stream("GET", url, headers=headers) as first:
        assert first.status_code == 200
        reader = FrameReader(first)
        await reader.take(1)
        second = await http.get(url, headers=headers)
        assert second.status_code == 429
        assert second.json()["type"] == "urn:agentmill:problem:too-many-streams"
        assert await ws_close_code(base_url, run_id, api.auth()) == 4429
    other_key = {**SSE, **api.auth(role="viewer")}
    async with http.stream("GET", url, headers=other_key) as third:
        assert third.status_code == 200  # the cap is per key
    while True:  # the server notices the first client left, then frees its slot
        async with http.stream("GET", url, headers=headers) as again:
            if again.status_code == 200:
                break
            assert again.status_code == 429
        await asyncio.sleep(0.02)


async def test_shutdown_ends_open_streams_and_refuses_new_ones(
    api: Api, http: httpx.AsyncClient, base_url: str
) -> None:
    api.model.latency = 1.0
    run_id = await start_run(api)
    url = f"/v1/runs/{run_id}/events"
    headers = {**SSE, **api.auth()}
    async with http.stream("GET", url, headers=headers) as response:
        lines = response.aiter_lines()
        async for frame in parse_frames(lines):
            if frame.event == "step_started":
                break
        async with connect(ws_url(base_url, run_id), additional_headers=api.auth()) as ws:
            await ws.recv()
            services_of(api).shutting_down.set()
            assert (await drain_ws(ws))[1] == 1001
        rest = [line async for line in lines]
    assert rest[-2] == sse.SHUTDOWN_FRAME.decode().strip()
    refused = await http.get(url, headers=headers)
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "2"


# WebSocket (real server)


def ws_url(base_url: str, run_id: str, query: str = "") -> str:
    return base_url.replace("http://", "ws://") + f"/v1/runs/{run_id}/events/ws{query}"


async def ws_messages(url: str, headers: dict[str, str]) -> tuple[list[dict[str, Any]], int]:
    """Every message until the server closes, and its close code."""
    async with connect(url, additional_headers=headers) as ws:
        return await drain_ws(ws)


async def drain_ws(ws: ClientConnection) -> tuple[list[dict[str, Any]], int]:
    received: list[dict[str, Any]] = []
    with contextlib.suppress(ConnectionClosedError):  # raised for codes other than 1000/1001
        async for message in ws:
            received.append(json.loads(message))
    assert ws.close_code is not None
    return received, ws.close_code


async def ws_close_code(base_url: str, run_id: str, headers: dict[str, str], q: str = "") -> int:
    _, code = await ws_messages(ws_url(base_url, run_id, q), headers)
    return code


async def test_websocket_streams_a_run_end_to_end(api: Api, base_url: str) -> None:
    api.model.latency = 0.1
    run_id = await start_run(api)
    received, code = await ws_messages(ws_url(base_url, run_id), api.auth(role="viewer"))
    assert code == 1000
    assert [e["seq"] for e in received] == list(range(1, len(received) + 1))
    assert received[-1]["kind"] == "run_finished"
    assert received[-1]["data"]["status"] == "succeeded"
    resumed, _ = await ws_messages(ws_url(base_url, run_id, "?after=3"), api.auth())
    assert resumed == received[3:]


@pytest.mark.parametrize(
    ("refusal", "code"),
    [("forged key", 1008), ("no key", 1008), ("other tenant", 4404), ("bad after", 4422)],
)
async def test_websocket_refusals_close_with_a_code(
    api: Api, base_url: str, refusal: str, code: int
) -> None:
    run_id = await finished_run(api)
    headers = {
        "forged key": {"Authorization": "Bearer amk_nope_secret"},
        "no key": {},
        "other tenant": api.auth("globex", "viewer"),
        "bad after": api.auth("acme", "viewer"),
    }[refusal]
    query = "?after=-2" if refusal == "bad after" else ""
    assert await ws_close_code(base_url, run_id, headers, query) == code
