"""/v1/runs: start, idempotency, list with filters and cursors, show, cancel, resume, retry."""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

import httpx
import pytest
from fastapi import FastAPI

from agentmill.engine.engine import Engine
from tests.server.conftest import Api

PROBLEM = "application/problem+json"


def engine_of(api: Api) -> Engine:
    found: Engine = cast(FastAPI, api.app).state.services.engine
    return found


async def start(
    api: Api, topic: str = "hello", *, headers: dict[str, str] | None = None
) -> httpx.Response:
    """Start `echo` as acme's operator, or with exactly `headers` when given."""
    body = {"workflow": "echo", "inputs": {"topic": topic}}
    return await api.client.post("/v1/runs", json=body, headers=headers or api.auth())


async def finish(api: Api, run_id: str, *, tenant: str = "acme") -> dict[str, Any]:
    """Wait for the run's current execution to end; its detail as the API shows it."""
    await asyncio.wait_for(engine_of(api).wait(run_id), 30)
    response = await api.get(f"/v1/runs/{run_id}", tenant=tenant, role="viewer")
    assert response.status_code == 200
    found: dict[str, Any] = response.json()
    return found


async def listed_since(api: Api, since: float, **params: Any) -> list[str]:
    """Ids of acme's runs created since `since` (the PostgreSQL database is shared by tests)."""
    query = {"created_after": since, **params}
    response = await api.get("/v1/runs", role="viewer", params=query)
    assert response.status_code == 200, response.text
    return [run["id"] for run in response.json()["items"]]


async def started_id(api: Api, topic: str = "hello") -> str:
    response = await start(api, topic)
    assert response.status_code == 201, response.text
    run_id: str = response.json()["id"]
    return run_id


# starting and showing


async def test_a_started_run_finishes_with_outputs_usage_and_steps(api: Api) -> None:
    response = await start(api)
    assert response.status_code == 201
    run = response.json()
    assert response.headers["location"] == f"/v1/runs/{run['id']}"
    assert run["status"] == "pending"
    detail = await finish(api, run["id"])
    assert detail["status"] == "succeeded"
    assert detail["outputs"] == {"polish": "echo: polish echo: draft hello"}
    assert detail["usage"]["requests"] == 2
    assert detail["plan"] == ["draft", "polish"]
    assert [(s["key"], s["status"], s["index"]) for s in detail["steps"]] == [
        ("draft", "succeeded", None),
        ("polish", "succeeded", None),
    ]
    assert detail["steps"][0]["output"] == "echo: draft hello"
    assert detail["last_seq"] > 0
    assert detail["tenant"] == "acme"
    assert detail["started_at"] <= detail["finished_at"]


async def test_the_trigger_names_the_key_that_started_the_run(api: Api) -> None:
    run_id = await started_id(api)
    listed = (await api.get("/v1/keys", role="admin")).json()["items"]
    operator_keys = {key["id"] for key in listed if key["role"] == "operator"}
    detail = await finish(api, run_id)
    assert detail["trigger"]["source"] == "api"
    assert detail["trigger"]["key"] in operator_keys


async def test_unknown_input_is_a_422_problem_naming_it(api: Api) -> None:
    body = {"workflow": "echo", "inputs": {"topic": "x", "topc": "y"}}
    response = await api.post("/v1/runs", json=body)
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM
    problem = response.json()
    assert problem["type"] == "urn:agentmill:problem:invalid-input"
    assert "unknown input 'topc'" in problem["detail"]
    assert "Traceback" not in problem["detail"]


async def test_missing_or_ill_typed_inputs_are_422(api: Api) -> None:
    missing = await api.post("/v1/runs", json={"workflow": "echo", "inputs": {}})
    assert missing.status_code == 422
    assert "missing required input 'topic'" in missing.json()["detail"]
    typed = await api.post("/v1/runs", json={"workflow": "echo", "inputs": {"topic": 3}})
    assert typed.status_code == 422
    assert "input 'topic' must be a string" in typed.json()["detail"]


async def test_an_unknown_workflow_is_404_and_a_bad_body_422(api: Api) -> None:
    unknown = await api.post("/v1/runs", json={"workflow": "nope", "inputs": {}})
    assert unknown.status_code == 404
    assert "workflows: echo, gated" in unknown.json()["detail"]
    extra = await api.post("/v1/runs", json={"workflow": "echo", "input": {"topic": "x"}})
    assert extra.status_code == 422
    assert extra.headers["content-type"] == PROBLEM
    assert any(error["loc"] == ["body", "input"] for error in extra.json()["errors"])


async def test_an_unknown_run_is_404(api: Api) -> None:
    response = await api.get("/v1/runs/0123456789abcdef0123", role="viewer")
    assert response.status_code == 404
    assert response.headers["content-type"] == PROBLEM


@pytest.mark.parametrize("run_id", ["a" * 65, "bad%20id", "..", "-x"])
async def test_malformed_run_ids_are_refused_without_a_lookup(api: Api, run_id: str) -> None:
    response = await api.get(f"/v1/runs/{run_id}", role="viewer")
    assert response.status_code in {404, 422}
    assert response.headers["content-type"] == PROBLEM


# idempotency


async def test_the_same_idempotency_key_returns_the_same_run(api: Api) -> None:
    since = time.time()
    headers = {"Idempotency-Key": "deploy-42"}
    first = await start(api, headers={**api.auth(), **headers})
    again = await start(api, headers={**api.auth(), **headers})
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["location"] == first.headers["location"]
    await finish(api, first.json()["id"])
    assert await listed_since(api, since) == [first.json()["id"]]


async def test_a_reused_key_with_another_body_is_409(api: Api) -> None:
    headers = {**api.auth(), "Idempotency-Key": "k1"}
    assert (await start(api, "one", headers=headers)).status_code == 201
    clash = await start(api, "two", headers=headers)
    assert clash.status_code == 409
    assert "different request" in clash.json()["detail"]


async def test_keys_are_per_tenant(api: Api) -> None:
    key = {"Idempotency-Key": "shared"}
    ours = await start(api, headers={**api.auth("acme"), **key})
    theirs = await start(api, headers={**api.auth("globex"), **key})
    assert (ours.status_code, theirs.status_code) == (201, 201)
    assert ours.json()["id"] != theirs.json()["id"]


async def test_concurrent_requests_with_one_key_start_one_run(api: Api) -> None:
    since = time.time()
    headers = {**api.auth(), "Idempotency-Key": "race"}
    responses = await asyncio.gather(*(start(api, headers=headers) for _ in range(5)))
    assert {r.status_code for r in responses} <= {200, 201}
    assert 201 in {r.status_code for r in responses}
    assert len({r.json()["id"] for r in responses}) == 1
    await finish(api, responses[0].json()["id"])
    assert len(await listed_since(api, since)) == 1


async def test_an_overlong_idempotency_key_is_422(api: Api) -> None:
    response = await start(api, headers={**api.auth(), "Idempotency-Key": "k" * 201})
    assert response.status_code == 422


# listing


async def _five_finished_runs(api: Api) -> list[str]:
    """Five runs of acme, oldest first; all of acme's runs created since the first."""
    ids = [await started_id(api, f"t{i}") for i in range(5)]
    for run_id in ids:
        await finish(api, run_id)
    return ids


async def test_cursor_pages_have_no_duplicates_and_no_gaps(api: Api) -> None:
    since = time.time()
    ids = await _five_finished_runs(api)
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2, "created_after": since}
        params |= {"cursor": cursor} if cursor else {}
        page = (await api.get("/v1/runs", role="viewer", params=params)).json()
        seen += [run["id"] for run in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == list(reversed(ids))


async def test_filters_by_status_workflow_and_time(api: Api) -> None:
    since = time.time()
    ids = await _five_finished_runs(api)
    details = [(await api.get(f"/v1/runs/{run_id}")).json() for run_id in ids]
    middle = details[2]["created_at"]

    async def listed(**params: Any) -> list[str]:
        return await listed_since(api, since, **params)

    assert await listed(status="succeeded", workflow="echo") == list(reversed(ids))
    assert await listed(status="failed") == []
    assert await listed(workflow="gated") == []
    assert await listed_since(api, middle) == [ids[4], ids[3], ids[2]]
    assert await listed(created_before=middle) == [ids[1], ids[0]]
    assert await listed_since(api, middle, created_before=details[4]["created_at"]) == [
        ids[3],
        ids[2],
    ]


@pytest.mark.parametrize(
    "params",
    [
        {"status": "done"},
        {"limit": 0},
        {"limit": 201},
        {"cursor": "not-a-cursor"},
        {"cursor": "WzEsIDJd"},  # [1, 2]: valid base64 and JSON, not a position
        {"created_after": "yesterday"},
        {"created_after": "nan"},
    ],
)
async def test_invalid_list_parameters_are_422(api: Api, params: dict[str, Any]) -> None:
    response = await api.get("/v1/runs", role="viewer", params=params)
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM


# cancel, resume, retry


async def test_cancel_a_slow_run_then_resume_it(api: Api) -> None:
    api.model.latency = 30.0
    run_id = await started_id(api)
    cancelled = await api.post(f"/v1/runs/{run_id}/cancel")
    assert cancelled.status_code == 202
    assert cancelled.json()["id"] == run_id
    detail = await finish(api, run_id)
    assert detail["status"] == "cancelled"
    again = await api.post(f"/v1/runs/{run_id}/cancel")
    assert again.status_code == 409
    assert again.json()["type"] == "urn:agentmill:problem:invalid-state"

    api.model.latency = 0.0
    resumed = await api.post(f"/v1/runs/{run_id}/resume")
    assert resumed.status_code == 202
    assert resumed.json()["status"] in {"pending", "running"}
    detail = await finish(api, run_id)
    assert detail["status"] == "succeeded"
    assert detail["outputs"] == {"polish": "echo: polish echo: draft hello"}


async def test_a_succeeded_run_cannot_be_resumed(api: Api) -> None:
    run_id = await started_id(api)
    await finish(api, run_id)
    response = await api.post(f"/v1/runs/{run_id}/resume")
    assert response.status_code == 409
    assert "already succeeded" in response.json()["detail"]


async def test_retry_from_a_middle_step_reuses_earlier_outputs(api: Api) -> None:
    original = await started_id(api)
    await finish(api, original)
    api.model.calls.clear()
    api.model.reply = lambda prompt: f"again: {prompt}"

    response = await api.post(f"/v1/runs/{original}/retry", json={"from_step": "polish"})
    assert response.status_code == 201
    retried = response.json()
    assert retried["id"] != original
    assert retried["parent_run_id"] == original
    assert response.headers["location"] == f"/v1/runs/{retried['id']}"
    detail = await finish(api, retried["id"])
    assert detail["status"] == "succeeded"
    assert api.model.calls == ["polish echo: draft hello"]  # no call for `draft`
    by_step = {step["step_id"]: step["output"] for step in detail["steps"]}
    assert by_step == {"draft": "echo: draft hello", "polish": "again: polish echo: draft hello"}
    assert detail["inputs"] == {"topic": "hello"}


async def test_retry_from_the_first_step_runs_its_dependents_again(api: Api) -> None:
    original = await started_id(api)
    await finish(api, original)
    api.model.calls.clear()
    response = await api.post(f"/v1/runs/{original}/retry", json={"from_step": "draft"})
    assert response.status_code == 201
    detail = await finish(api, response.json()["id"])
    assert detail["status"] == "succeeded"
    assert api.model.calls == ["draft hello", "polish echo: draft hello"]


async def test_retry_from_an_unknown_step_is_422(api: Api) -> None:
    original = await started_id(api)
    await finish(api, original)
    response = await api.post(f"/v1/runs/{original}/retry", json={"from_step": "nope"})
    assert response.status_code == 422
    assert "has no step 'nope' (steps: draft, polish)" in response.json()["detail"]


# roles


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/runs", {"workflow": "echo", "inputs": {"topic": "x"}}),
        ("/v1/runs/{id}/cancel", None),
        ("/v1/runs/{id}/resume", None),
        ("/v1/runs/{id}/retry", {"from_step": "draft"}),
    ],
)
async def test_viewers_cannot_change_runs(api: Api, path: str, body: Any) -> None:
    run_id = await started_id(api)
    response = await api.post(path.format(id=run_id), role="viewer", json=body)
    assert response.status_code == 403
    assert "has the viewer role; this needs operator" in response.json()["detail"]
    await finish(api, run_id)


async def test_viewers_can_read_runs(api: Api) -> None:
    run_id = await started_id(api)
    await finish(api, run_id)
    assert (await api.get("/v1/runs", role="viewer")).status_code == 200
    assert (await api.get(f"/v1/runs/{run_id}", role="viewer")).status_code == 200
