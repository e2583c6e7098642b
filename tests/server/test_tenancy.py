"""Tenancy: another tenant's run answers 404 on every endpoint that takes a run id.

Each check has a control: the owning tenant gets a non-404 answer from the same request,
so a 404 here means "not yours", not "no such route".
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, cast

import httpx
import pytest
from fastapi import FastAPI

from agentmill.engine.engine import Engine
from tests.server.conftest import Api

OWNER = "globex"
OTHER = "acme"
SSE = {"Accept": "text/event-stream"}


@dataclass(frozen=True)
class Call:
    name: str
    method: str
    path: str
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict[str, str])


def calls_on(run_id: str) -> list[Call]:
    """Every request that names a run, in an order the owner can replay without 404s."""
    base = f"/v1/runs/{run_id}"
    return [
        Call("show", "GET", base),
        Call("events", "GET", f"{base}/events"),
        Call("approvals", "GET", f"{base}/approvals"),
        Call("decide", "POST", f"{base}/approvals/sign-off", json={"decision": "approve"}),
        Call("events-sse", "GET", f"{base}/events", headers={**SSE, "Last-Event-ID": "1"}),
        Call("retry", "POST", f"{base}/retry", json={"from_step": "draft"}),
        Call("resume", "POST", f"{base}/resume"),
        Call("cancel", "POST", f"{base}/cancel"),
    ]


async def send(api: Api, call: Call, tenant: str) -> httpx.Response:
    """The response, read in full (httpx's ASGI transport waits for a stream's end)."""
    headers = {**api.auth(tenant, "operator"), **call.headers}
    return await api.client.request(call.method, call.path, json=call.json, headers=headers)


def engine_of(api: Api) -> Engine:
    found: Engine = cast(FastAPI, api.app).state.services.engine
    return found


@pytest.fixture
async def waiting_run(api: Api) -> str:
    """A run of the owner tenant, waiting at its approval gate."""
    response = await api.post("/v1/runs", tenant=OWNER, json={"workflow": "gated", "inputs": {}})
    assert response.status_code == 201, response.text
    run_id: str = response.json()["id"]
    store = engine_of(api).store
    async with asyncio.timeout(30):
        while True:
            await store.journal.commit()
            if any(event.kind == "approval_requested" for event in await store.events(run_id)):
                return run_id
            await asyncio.sleep(0.05)


async def test_another_tenants_run_is_404_on_every_endpoint(api: Api, waiting_run: str) -> None:
    statuses: dict[str, int] = {}
    for call in calls_on(waiting_run):
        response = await send(api, call, OTHER)
        statuses[call.name] = response.status_code
        if response.status_code == 404:
            assert response.headers["content-type"] == "application/problem+json"
            assert OWNER not in response.text
    assert statuses == {call.name: 404 for call in calls_on(waiting_run)}
    shown = await api.get(f"/v1/runs/{waiting_run}", tenant=OWNER)
    assert shown.json()["status"] == "running"  # nothing the other tenant sent took effect


async def test_the_owner_reaches_the_same_endpoints(api: Api, waiting_run: str) -> None:
    """The control for the test above."""
    statuses: dict[str, int] = {}
    for call in calls_on(waiting_run):
        if call.name == "events-sse":  # after the decision: the stream ends with the run
            await asyncio.wait_for(engine_of(api).wait(waiting_run), 30)
        statuses[call.name] = (await send(api, call, OWNER)).status_code
    assert statuses == {
        "show": 200,
        "events": 200,
        "events-sse": 200,
        "approvals": 200,
        "decide": 200,
        "retry": 201,
        "resume": 409,  # it succeeded
        "cancel": 409,
    }


async def test_lists_show_only_the_callers_runs_and_approvals(api: Api, waiting_run: str) -> None:
    theirs = await api.get("/v1/runs", tenant=OWNER, role="viewer")
    ours = await api.get("/v1/runs", tenant=OTHER, role="viewer")
    assert waiting_run in [run["id"] for run in theirs.json()["items"]]
    assert waiting_run not in [run["id"] for run in ours.json()["items"]]
    assert all(run["tenant"] == OTHER for run in ours.json()["items"])

    pending = {"status": "pending"}
    their_gates = await api.get("/v1/approvals", tenant=OWNER, role="viewer", params=pending)
    our_gates = await api.get("/v1/approvals", tenant=OTHER, role="viewer", params=pending)
    assert waiting_run in [gate["run_id"] for gate in their_gates.json()["items"]]
    assert waiting_run not in [gate["run_id"] for gate in our_gates.json()["items"]]


async def test_a_viewer_cannot_approve(api: Api, waiting_run: str) -> None:
    path = f"/v1/runs/{waiting_run}/approvals/sign-off"
    response = await api.post(path, tenant=OWNER, role="viewer", json={"decision": "approve"})
    assert response.status_code == 403
    gates = await api.get(f"/v1/runs/{waiting_run}/approvals", tenant=OWNER, role="viewer")
    assert [gate["status"] for gate in gates.json()["items"]] == ["pending"]
