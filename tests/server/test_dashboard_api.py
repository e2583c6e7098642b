"""The REST additions the dashboard reads: runs by trigger, spend per agent and model, and
spend per hour or day."""

from __future__ import annotations

import time
from typing import Any

from agentmill.server.routes.costs import MAX_SERIES_BUCKETS
from agentmill.store import Store
from tests.server.conftest import Api
from tests.server.test_runs import finish, started_id
from tests.store.seed import insert_runs, run_row


def _store(api: Api) -> Store:
    store: Store = api.app.state.services.engine.store  # type: ignore[attr-defined]
    return store


async def test_runs_filter_by_trigger(api: Api) -> None:
    since = time.time()
    from_api = await started_id(api)
    await finish(api, from_api)
    await insert_runs(
        _store(api).engine,
        [
            run_row("from-cli", created_at=time.time()),
            run_row("hook", created_at=time.time(), trigger={"source": "github"}),
            run_row("theirs", created_at=time.time(), tenant="globex", trigger={"source": "api"}),
        ],
    )

    async def listed(trigger: str, tenant: str = "acme") -> list[str]:
        params = {"trigger": trigger, "created_after": since}
        response = await api.get("/v1/runs", tenant=tenant, role="viewer", params=params)
        assert response.status_code == 200, response.text
        return [run["id"] for run in response.json()["items"]]

    assert await listed("api") == [from_api]
    assert await listed("cli") == ["from-cli"]
    assert await listed("github") == ["hook"]
    assert await listed("api", tenant="globex") == ["theirs"]
    bad = await api.get("/v1/runs", role="viewer", params={"trigger": "no spaces"})
    assert bad.status_code == 422


async def test_costs_per_agent_and_model(api: Api) -> None:
    detail = await finish(api, await started_id(api))
    models = {step["model"] for step in detail["steps"]}
    assert {step["agent"] for step in detail["steps"]} == {"writer"}
    by_agent = await api.get("/v1/costs", role="viewer", params={"group_by": "agent"})
    assert by_agent.status_code == 200, by_agent.text
    ((agent, calls, usd),) = [(i["group"], i["calls"], i["usd"]) for i in by_agent.json()["items"]]
    assert (agent, calls) == ("writer", 2)
    assert abs(usd - detail["cost"]["usd"]) < 1e-9
    by_model = await api.get("/v1/costs", role="viewer", params={"group_by": "model"})
    assert {item["group"] for item in by_model.json()["items"]} == models
    theirs = await api.get(
        "/v1/costs", tenant="globex", role="viewer", params={"group_by": "agent"}
    )
    assert theirs.json()["items"] == []


async def test_costs_series_per_hour(api: Api) -> None:
    detail = await finish(api, await started_id(api))
    finished = max(step["finished_at"] for step in detail["steps"])
    hour = finished - finished % 3600
    window: dict[str, Any] = {"since": hour - 7200, "until": hour + 3600, "bucket": "hour"}
    response = await api.get(
        "/v1/costs/series", role="viewer", params={**window, "group_by": "agent"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["group_by"], body["bucket"]) == ("agent", "hour")
    points = body["items"]
    assert {point["group"] for point in points} == {"writer"}
    assert {point["bucket_start"] for point in points} <= {hour - 3600, hour}
    assert sum(point["calls"] for point in points) == 2
    assert abs(sum(point["usd"] for point in points) - detail["cost"]["usd"]) < 1e-9
    theirs = await api.get("/v1/costs/series", tenant="globex", role="viewer", params=window)
    assert theirs.json()["items"] == []


async def test_costs_series_refuses_a_window_it_cannot_draw(api: Api) -> None:
    backwards = {"since": 2000.0, "until": 1000.0}
    response = await api.get("/v1/costs/series", role="viewer", params=backwards)
    assert response.status_code == 422
    assert "after" in response.json()["detail"]
    too_long = {"since": 0, "until": (MAX_SERIES_BUCKETS + 1) * 3600, "bucket": "hour"}
    response = await api.get("/v1/costs/series", role="viewer", params=too_long)
    assert response.status_code == 422
    assert "bucket=day" in response.json()["detail"]
    fits = {**too_long, "bucket": "day"}
    assert (await api.get("/v1/costs/series", role="viewer", params=fits)).status_code == 200
    missing = await api.get("/v1/costs/series", role="viewer", params={"since": 0})
    assert missing.status_code == 422
