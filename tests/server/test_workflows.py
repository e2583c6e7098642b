"""/v1/workflows: the configured workflows, and validating a posted config."""

from __future__ import annotations

import httpx
import pytest

from agentmill.server.app import create_app
from agentmill.settings import Settings
from agentmill.store.keys import KeyStore, Role
from tests.server.conftest import PROJECT, Api


async def test_lists_the_configured_workflows(api: Api) -> None:
    response = await api.get("/v1/workflows", role="viewer")
    assert response.status_code == 200
    items = {item["name"]: item for item in response.json()["items"]}
    assert set(items) == {"echo", "gated"}
    assert items["echo"] == {
        "name": "echo",
        "description": "",
        "inputs": {
            "topic": {"type": "string", "required": True, "default": None, "description": ""}
        },
        "steps": ["draft", "polish"],
    }
    assert items["gated"]["inputs"]["topic"]["required"] is False
    assert items["gated"]["inputs"]["topic"]["default"] == "x"
    assert items["gated"]["steps"] == ["draft", "sign-off", "publish"]


async def test_shows_one_workflow(api: Api) -> None:
    response = await api.get("/v1/workflows/gated", role="viewer")
    assert response.status_code == 200
    assert response.json()["name"] == "gated"


async def test_an_unknown_workflow_is_404_naming_the_known_ones(api: Api) -> None:
    response = await api.get("/v1/workflows/nope", role="viewer")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert "workflows: echo, gated" in response.json()["detail"]


async def test_a_valid_config_validates(api: Api) -> None:
    response = await api.post("/v1/workflows/validate", role="viewer", json={"config": PROJECT})
    assert response.status_code == 200
    assert response.json() == {"valid": True, "problems": []}


async def test_every_problem_of_a_bad_config_is_reported_with_its_line(api: Api) -> None:
    config = """\
version: 1
agents:
  writer: {model: openai:gpt-4o, temprature: 0.2}
workflows:
  w:
    steps:
      - {id: a, agent: ghost, prompt: "{{ inputs.nope }}"}
"""
    response = await api.post("/v1/workflows/validate", role="viewer", json={"config": config})
    assert response.status_code == 200
    result = response.json()
    assert result["valid"] is False
    found = {(p["line"], p["message"]) for p in result["problems"]}
    assert any(line == 3 and "temprature" in message for line, message in found)
    assert (7, "step 'a' uses unknown agent 'ghost'") in found
    assert any(line == 7 and "unknown input 'nope'" in message for line, message in found)
    assert all(set(p) == {"line", "message", "hint"} for p in result["problems"])


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("", "the file is empty"),
        ("workflows: [unclosed", "invalid YAML"),
        ("a: \x00", "invalid YAML"),
        ("[" * 3000, "nested too deeply"),
        ("- just a list", "the top level must be a mapping"),
    ],
)
async def test_unparseable_configs_are_problems_not_errors(
    api: Api, config: str, message: str
) -> None:
    response = await api.post("/v1/workflows/validate", role="viewer", json={"config": config})
    assert response.status_code == 200
    result = response.json()
    assert result["valid"] is False
    assert message in result["problems"][0]["message"]


async def test_an_oversized_config_is_refused(api: Api) -> None:
    config = "#" * (api.settings.max_request_bytes + 1)
    response = await api.post("/v1/workflows/validate", role="viewer", json={"config": config})
    assert response.status_code == 413


async def test_workflows_need_a_key(api: Api) -> None:
    assert (await api.client.get("/v1/workflows")).status_code == 401
    response = await api.client.post("/v1/workflows/validate", json={"config": PROJECT})
    assert response.status_code == 401


async def test_a_server_without_config_has_no_workflows(sqlite_settings: Settings) -> None:
    app = create_app(sqlite_settings, project=None, workers=0)
    async with app.router.lifespan_context(app):
        _, secret = await KeyStore(app.state.services.engine.store.engine).create(
            tenant="acme", role=Role.OPERATOR
        )
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {secret}"}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://test", headers=headers
        ) as client:
            listed = await client.get("/v1/workflows")
            shown = await client.get("/v1/workflows/echo")
            started = await client.post("/v1/runs", json={"workflow": "echo", "inputs": {}})
            validated = await client.post("/v1/workflows/validate", json={"config": PROJECT})
    assert listed.json() == {"items": []}
    assert shown.status_code == 404
    assert started.status_code == 404
    assert "agentmill serve --config FILE" in started.json()["detail"]
    assert validated.json()["valid"] is True
