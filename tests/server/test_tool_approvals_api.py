"""Tool calls waiting for approval through the API: listed with the call, decided under
their gate id (`step#call`, `%23` in the path) with edited arguments, by the run's tenant."""

from __future__ import annotations

from pathlib import Path
from typing import cast
from urllib.parse import quote

from fastapi import FastAPI

from agentmill.engine.engine import Engine
from agentmill.store import RunStatus
from agentmill.store.keys import parse_key
from tests.engine.tool_project import requested, scripted, tool_project
from tests.server.conftest import Api


def engine_of(api: Api) -> Engine:
    return cast(FastAPI, api.app).state.services.engine


async def test_a_tool_call_is_listed_and_approved_with_edited_arguments(
    api: Api, tmp_path: Path
) -> None:
    engine = engine_of(api)
    project = tool_project(tmp_path)
    with scripted(project):
        run = await project.submit(engine, tenant="acme")
        await requested(engine, run.id, "work#t1.1")
        listed = await api.get(f"/v1/runs/{run.id}/approvals", role="viewer")
        (item,) = listed.json()["items"]
        assert item["step_id"] == "work#t1.1"
        assert item["prompt"] == 'Call save_note with {"path": "notes.md", "text": "hello"}'
        assert (item["tool"], item["reason"]) == ("save_note", "I keep the notes notes.")
        assert item["arguments"] == {"path": "notes.md", "text": "hello"}
        path = f"/v1/runs/{run.id}/approvals/{quote('work#t1.1', safe='')}"
        edit = {"decision": "approve", "arguments": {"path": "b.md", "text": "hi"}}
        other = await api.post(path, json=edit, tenant="globex")
        assert other.status_code == 404, other.text
        not_an_object = await api.post(path, json={"decision": "approve", "arguments": [1]})
        assert not_an_object.status_code == 422, not_an_object.text
        response = await api.post(path, json=edit)
        assert response.status_code == 200, response.text
        final = await engine.wait(run.id)
    body = response.json()
    assert body["status"] == "approved"
    assert body["edited_arguments"] == {"path": "b.md", "text": "hi"}
    assert body["decided_by"] == parse_key(api.keys[("acme", "operator")])
    assert final.status is RunStatus.SUCCEEDED, final.error
    assert [(c["path"], c["text"]) for c in project.executed()] == [("b.md", "hi")]


async def test_arguments_on_a_gate_step_are_refused_with_422(api: Api) -> None:
    from tests.server.test_approvals import pending, start_gated

    run_id = await start_gated(api)
    await pending(api.client, run_id, api.auth())
    body = {"decision": "approve", "arguments": {"path": "x"}}
    response = await api.post(f"/v1/runs/{run_id}/approvals/sign-off", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["type"].endswith("invalid-input")
    assert "is an approval step, not a tool call" in response.json()["detail"]
    approved = await api.post(f"/v1/runs/{run_id}/approvals/sign-off", json={"decision": "approve"})
    assert approved.status_code == 200, approved.text
