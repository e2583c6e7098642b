"""The approvals API: list, decide once, roles and tenants, expiry, and a server restart."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import httpx
import pytest
from fastapi import FastAPI

from agentmill.engine.engine import Engine
from agentmill.server.app import create_app
from agentmill.settings import Settings
from agentmill.spec.loader import load_project_text
from agentmill.store import RunStatus
from agentmill.store.keys import KeyStore, Role, parse_key
from tests.fakes import ScriptedModel
from tests.server.conftest import PROJECT, Api

SHORT = """
version: 1
workflows:
  w:
    steps:
      - {id: gate, approval: {prompt: "quick?", timeout: 500ms}}
"""


def engine_of(api: Api) -> Engine:
    return cast(FastAPI, api.app).state.services.engine


async def start_gated(api: Api, tenant: str = "acme") -> str:
    engine = engine_of(api)
    spec = load_project_text(PROJECT, "agentmill.yaml").spec
    run = await engine.submit(spec, "gated", {}, tenant=tenant)
    return run.id


async def pending(client: httpx.AsyncClient, run_id: str, headers: dict[str, str]) -> Any:
    """The run's first approval once it is pending (the run reached its gate)."""
    async with asyncio.timeout(20):
        while True:
            response = await client.get(f"/v1/runs/{run_id}/approvals", headers=headers)
            assert response.status_code == 200, response.text
            items = response.json()["items"]
            if items and items[0]["status"] == "pending":
                return items[0]
            await asyncio.sleep(0.05)


def decision(choice: str = "approve", comment: str | None = None) -> dict[str, Any]:
    return {"decision": choice, "comment": comment}


async def test_pending_approvals_are_listed_and_approved(api: Api) -> None:
    run_id = await start_gated(api)
    item = await pending(api.client, run_id, api.auth(role="viewer"))
    assert item["prompt"] == "Publish echo: draft x?"
    assert item["on_timeout"] == "reject"
    assert item["expires_at"] - item["created_at"] == pytest.approx(3600)
    listed = await api.get("/v1/approvals?status=pending", role="viewer")
    assert [(a["run_id"], a["step_id"]) for a in listed.json()["items"]] == [(run_id, "sign-off")]
    response = await api.post(
        f"/v1/runs/{run_id}/approvals/sign-off", json=decision(comment="ship it")
    )
    assert response.status_code == 200, response.text
    body = response.json()
    operator_id = parse_key(api.keys[("acme", "operator")])
    assert body["status"] == "approved"
    assert (body["decided_by"], body["comment"]) == (operator_id, "ship it")
    assert set(body) == {
        "run_id",
        "step_id",
        "status",
        "prompt",
        "comment",
        "decided_by",
        "created_at",
        "expires_at",
        "decided_at",
        "on_timeout",
        "tool",
        "arguments",
        "reason",
        "edited_arguments",
    }
    assert body["tool"] is None  # a gate step, not a tool call
    run = await engine_of(api).wait(run_id)
    assert run.status is RunStatus.SUCCEEDED
    assert (await api.get("/v1/approvals?status=pending")).json()["items"] == []
    approved = (await api.get("/v1/approvals?status=approved")).json()["items"]
    assert [a["run_id"] for a in approved] == [run_id]


async def test_two_concurrent_decisions_resume_the_run_once(api: Api) -> None:
    run_id = await start_gated(api)
    await pending(api.client, run_id, api.auth())
    path = f"/v1/runs/{run_id}/approvals/sign-off"
    first, second = await asyncio.gather(
        api.post(path, json=decision("approve")), api.post(path, json=decision("approve"))
    )
    assert sorted([first.status_code, second.status_code]) == [200, 409]
    refused = first if first.status_code == 409 else second
    operator_id = parse_key(api.keys[("acme", "operator")])
    assert f"was already approved by {operator_id}" in refused.json()["detail"]
    run = await engine_of(api).wait(run_id)
    assert run.status is RunStatus.SUCCEEDED
    assert api.model.count("publish echo: draft x") == 1
    events = await engine_of(api).store.events(run_id)
    assert [e.kind for e in events].count("approval_decided") == 1


async def test_roles_and_tenants(api: Api) -> None:
    run_id = await start_gated(api)
    await pending(api.client, run_id, api.auth())
    path = f"/v1/runs/{run_id}/approvals/sign-off"
    viewer = await api.post(path, role="viewer", json=decision())
    assert viewer.status_code == 403
    other = await api.post(path, tenant="globex", json=decision())
    assert other.status_code == 404
    assert (await api.get(f"/v1/runs/{run_id}/approvals", tenant="globex")).status_code == 404
    assert (await api.get("/v1/approvals", tenant="globex")).json()["items"] == []
    unknown_step = await api.post(f"/v1/runs/{run_id}/approvals/draft", json=decision())
    assert unknown_step.status_code == 404
    assert "no approval step 'draft'" in unknown_step.json()["detail"]
    assert (await api.post("/v1/runs/nope/approvals/sign-off", json=decision())).status_code == 404
    bad = await api.post(path, json={"decision": "maybe"})
    assert bad.status_code == 422
    rejected = await api.post(path, json=decision("reject", "not now"))
    assert rejected.json()["status"] == "rejected"
    run = await engine_of(api).wait(run_id)
    assert run.status is RunStatus.SUCCEEDED
    assert api.model.count("publish echo: draft x") == 0


async def test_an_expired_approval_cannot_be_decided(api: Api) -> None:
    engine = engine_of(api)
    run = await engine.submit(load_project_text(SHORT, "t.yaml").spec, "w", {}, tenant="acme")
    finished = await engine.wait(run.id)
    assert finished.status is RunStatus.SUCCEEDED
    response = await api.post(f"/v1/runs/{run.id}/approvals/gate", json=decision())
    assert response.status_code == 409
    assert "expired at" in response.json()["detail"]
    expired = (await api.get("/v1/approvals?status=expired")).json()["items"]
    assert [(a["run_id"], a["decided_by"]) for a in expired] == [(run.id, None)]


async def test_a_pending_approval_survives_a_server_restart(
    server_settings: Settings, scripted: ScriptedModel
) -> None:
    project = load_project_text(PROJECT, "agentmill.yaml")
    first = create_app(server_settings, project=project, workers=4)
    async with first.router.lifespan_context(first):
        engine = first.state.services.engine
        _, secret = await KeyStore(engine.store.engine).create(tenant="acme", role=Role.OPERATOR)
        headers = {"Authorization": f"Bearer {secret}"}
        run = await engine.submit(project.spec, "gated", {}, tenant="acme")
        async with _client(first) as client:
            await _requested(engine, run.id, times=1)
            before = await pending(client, run.id, headers)
    # The first server stopped: the run was interrupted and handed back.
    second = create_app(server_settings, project=project, workers=4)
    async with second.router.lifespan_context(second), _client(second) as client:
        engine = second.state.services.engine
        await _requested(engine, run.id, times=2)
        after = await pending(client, run.id, headers)
        assert after["expires_at"] == before["expires_at"]
        path = f"/v1/runs/{run.id}/approvals/sign-off"
        assert (await client.post(path, headers=headers, json=decision())).status_code == 200
        final = await engine.wait(run.id)
        kinds = [e.kind for e in await engine.store.events(run.id)]
    assert final.status is RunStatus.SUCCEEDED
    assert "run_interrupted" in kinds
    assert scripted.calls == ["draft x", "publish echo: draft x"]


def _client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def _requested(engine: Engine, run_id: str, *, times: int) -> None:
    """Wait until the run announced its gate `times` times (once per execution)."""
    async with asyncio.timeout(20):
        while True:
            await engine.store.journal.commit()
            kinds = [e.kind for e in await engine.store.events(run_id)]
            if kinds.count("approval_requested") == times:
                return
            await asyncio.sleep(0.05)


async def test_the_gate_of_a_cancelled_run_cannot_be_decided(api: Api) -> None:
    run_id = await start_gated(api)
    await pending(api.client, run_id, api.auth())
    assert (await api.post(f"/v1/runs/{run_id}/cancel")).status_code == 202
    async with asyncio.timeout(20):
        while (await engine_of(api).store.get_run(run_id, tenant="acme")).status is not (
            RunStatus.CANCELLED
        ):
            await asyncio.sleep(0.05)
    response = await api.post(f"/v1/runs/{run_id}/approvals/sign-off", json=decision())
    assert response.status_code == 409
    assert "is cancelled: nothing waits for this approval" in response.json()["detail"]
