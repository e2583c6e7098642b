"""Costs in the API: per run (with its steps), per workflow for the caller's tenant, metrics."""

from __future__ import annotations

import time

from agentmill.store.keys import KeyStore, Role
from tests.server.conftest import Api
from tests.server.test_runs import finish, started_id


async def test_run_detail_shows_the_cost_of_each_step_and_the_run(api: Api) -> None:
    detail = await finish(api, await started_id(api))
    step_costs = [step["cost_usd"] for step in detail["steps"]]
    assert len(step_costs) == 2
    assert all(c is not None and c > 0 for c in step_costs)
    cost = detail["cost"]
    assert cost["calls"] == 2
    assert cost["complete"] is True
    assert abs(cost["usd"] - sum(step_costs)) < 1e-9


async def test_costs_cover_only_the_callers_tenant(api: Api) -> None:
    since = time.time()
    detail = await finish(api, await started_id(api))
    response = await api.get("/v1/costs", role="viewer", params={"since": since})
    assert response.status_code == 200, response.text
    (item,) = response.json()["items"]
    assert (item["group"], item["calls"]) == ("echo", 2)
    assert abs(item["usd"] - detail["cost"]["usd"]) < 1e-9

    other = await api.get("/v1/costs", tenant="globex", role="viewer", params={"since": since})
    assert other.json()["items"] == []
    total = await api.get("/v1/costs", role="viewer", params={"group_by": "tenant"})
    assert [item["group"] for item in total.json()["items"]] == ["acme"]
    bad = await api.get("/v1/costs", role="viewer", params={"group_by": "step"})
    assert bad.status_code == 422


async def test_metrics_show_spend_per_tenant_and_workflow(api: Api) -> None:
    await finish(api, await started_id(api))
    keys = KeyStore(api.app.state.services.engine.store.engine)  # type: ignore[attr-defined]
    _, secret = await keys.create(tenant="default", role=Role.ADMIN)
    response = await api.client.get("/metrics", headers={"Authorization": f"Bearer {secret}"})
    assert 'agentmill_spend_usd{tenant="acme",workflow="echo"}' in response.text
    assert 'agentmill_unpriced_calls{tenant="acme",workflow="echo"} 0.0' in response.text
