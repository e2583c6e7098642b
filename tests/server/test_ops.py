"""Health, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio

from agentmill.store.keys import KeyStore, Role
from tests.server.conftest import Api


async def _finished_run(api: Api) -> str:
    started = await api.post("/v1/runs", json={"workflow": "echo", "inputs": {"topic": "m"}})
    run_id = started.json()["id"]
    await asyncio.wait_for(api.app.state.services.engine.wait(run_id), 20)  # type: ignore[attr-defined]
    return str(run_id)


async def test_metrics_count_runs_steps_tokens_and_requests(api: Api) -> None:
    await _finished_run(api)
    keys = KeyStore(api.app.state.services.engine.store.engine)  # type: ignore[attr-defined]
    _, secret = await keys.create(tenant="default", role=Role.ADMIN)
    response = await api.client.get("/metrics", headers={"Authorization": f"Bearer {secret}"})
    assert response.status_code == 200
    text = response.text
    assert 'agentmill_runs{status="succeeded"} 1.0' in text
    assert 'agentmill_step_duration_seconds_count{model="openai:gpt-4o"} 2.0' in text
    assert 'agentmill_tokens_total{kind="output",model="openai:gpt-4o"}' in text
    assert 'agentmill_http_request_duration_seconds_count{method="POST",route="/v1/runs"' in text


async def test_metrics_are_only_for_admins_of_the_metrics_tenant(api: Api) -> None:
    other_admin = await api.get("/metrics", role="admin")  # tenant acme
    assert other_admin.status_code == 403
    assert "AGENTMILL_METRICS_TENANT" in other_admin.json()["detail"]
    assert (await api.get("/metrics", role="operator")).status_code == 403


async def test_readyz_says_not_ready_once_shutdown_starts(api: Api) -> None:
    assert (await api.client.get("/readyz")).status_code == 200
    api.app.state.services.shutting_down.set()  # type: ignore[attr-defined]
    response = await api.client.get("/readyz")
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
