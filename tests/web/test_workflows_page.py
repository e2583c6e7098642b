"""The workflows page in-process: the config's workflows with inputs, triggers and recent
runs; the start form, one field per input by type, coerced like the API (errors shown with
the values typed), started once per form, refused to viewers and to forms without CSRF."""

# ruff: noqa: F811  (the `web` fixture is imported, then named by each test)

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from markupsafe import escape

from agentmill.server.app import create_app
from agentmill.settings import Settings
from agentmill.spec.loader import load_project_text
from agentmill.store.keys import KeyStore, Role, parse_key
from tests.web.web_client import Web, csrf_of, web  # noqa: F401  # pyright: ignore[reportUnusedImport]

CANARY = '<script>alert(1)</script><img src=x onerror="alert(2)">'

TYPED = f"""
version: 1
agents:
  writer: {{model: openai:gpt-4o}}
workflows:
  typed:
    description: {json.dumps("Every kind of input " + CANARY)}
    inputs:
      title: {{type: string, description: {json.dumps("What to write about " + CANARY)}}}
      count: {{type: integer, default: 3, description: how many}}
      ratio: {{type: number, default: 0.5}}
      loud: {{type: boolean, default: false}}
      tags: {{type: list, default: [a, b]}}
      extra: {{type: object, default: {{}}}}
      note: {{type: string, default: null}}
    steps:
      - {{id: write, agent: writer, prompt: "{{{{ inputs.title }}}} x{{{{ inputs.count }}}}"}}
  other:
    steps:
      - {{id: one, agent: writer, prompt: hi}}
triggers:
  - github:
      events: [pull_request.opened, issue_comment]
      workflow: typed
      inputs: {{title: "{{{{ payload.pull_request.title }}}}"}}
"""


@pytest.fixture
async def typed_web(web: Web) -> AsyncIterator[Web]:
    """The same app serving the TYPED config instead (its own services.project)."""
    services = web.services
    kept = services.project
    services.project = load_project_text(TYPED, "agentmill.yaml")
    try:
        yield web
    finally:
        services.project = kept


async def form_of(client: httpx.AsyncClient, name: str) -> tuple[str, dict[str, str]]:
    page = await client.get(f"/workflows/{name}")
    assert page.status_code == 200, page.text
    key = re.search(r'name="idempotency_key" value="([^"]+)"', page.text)
    assert key is not None
    return page.text, {"csrf_token": csrf_of(page.text), "idempotency_key": key.group(1)}


async def test_the_list_shows_each_workflow_with_inputs_triggers_and_recent_runs(
    typed_web: Web,
) -> None:
    web = typed_web
    run_id = await web.start("other", {})
    client = await web.signed_in("acme", "viewer")
    page = (await client.get("/workflows")).text
    assert re.findall(r'data-workflow="([^"]+)"', page) == ["typed", "other"]
    assert "GitHub webhook: pull_request.opened, issue_comment (concurrency: supersede)" in page
    assert '<code>count</code> <span class="muted">integer</span>' in page
    assert '<code>title</code> <span class="muted">string, required</span>' in page
    assert f'href="/runs/{run_id}"' in page
    assert str(escape(f"Every kind of input {CANARY}")) in page
    assert "<script>alert" not in page
    assert "Start a run" not in page  # a viewer starts nothing


async def test_another_tenants_runs_are_not_among_the_recent_ones(web: Web) -> None:
    theirs = await web.start("echo", {"topic": "t"}, tenant="globex")
    client = await web.signed_in("acme", "operator")
    for path in ("/workflows", "/workflows/echo"):
        page = (await client.get(path)).text
        assert theirs not in page
        assert "No runs yet." in page


async def test_the_form_has_a_field_per_input_by_type_with_defaults(typed_web: Web) -> None:
    client = await typed_web.signed_in("acme", "operator")
    page, _ = await form_of(client, "typed")
    fields = dict(re.findall(r'<(input|textarea)[^>]*name="input\.(\w+)"', page)[i][::-1]
                  for i in range(7))  # fmt: skip
    assert fields == {
        "title": "input",
        "count": "input",
        "ratio": "input",
        "loud": "input",
        "tags": "textarea",
        "extra": "textarea",
        "note": "input",
    }
    assert re.search(r'type="number" id="[^"]+" name="input.count" value="3" step="1"', page)
    assert re.search(r'type="number" id="[^"]+" name="input.ratio" value="0.5" step="any"', page)
    assert re.search(r'type="checkbox" id="[^"]+" name="input.loud" value="true">', page)
    assert re.search(r'name="input.title" value="" required', page)
    assert "[\n  &#34;a&#34;,\n  &#34;b&#34;\n]</textarea>" in page
    assert str(escape(f"What to write about {CANARY}")) in page
    assert "<script>alert" not in page
    assert '<svg xmlns="http://www.w3.org/2000/svg" class="dag"' in page


async def test_a_run_starts_from_the_form_with_typed_inputs(typed_web: Web) -> None:
    web = typed_web
    client = await web.signed_in("acme", "operator")
    _, hidden = await form_of(client, "typed")
    form = {
        "input.title": "cats",
        "input.count": "7",
        "input.ratio": "1.25",
        "input.loud": "true",
        "input.tags": '["x"]',
        "input.extra": '{"k": [1]}',
        "input.note": "",
    }
    response = await client.post("/workflows/typed/runs", data=hidden | form)
    assert response.status_code == 303, response.text
    run_id = response.headers["location"].removeprefix("/runs/")
    run = await web.services.engine.store.get_run(run_id, tenant="acme")
    assert run.workflow == "typed"
    assert run.inputs == {
        "title": "cats",
        "count": 7,
        "ratio": 1.25,
        "loud": True,
        "tags": ["x"],
        "extra": {"k": [1]},
        "note": None,
    }
    operator = parse_key(web.keys[("acme", "operator")])
    assert run.trigger == {"source": "dashboard", "key": operator}
    runs = (await client.get("/?trigger=dashboard")).text
    assert f'data-run="{run_id}"' in runs


async def test_an_unchecked_box_is_false_and_empty_fields_take_their_defaults(
    typed_web: Web,
) -> None:
    client = await typed_web.signed_in("acme", "operator")
    _, hidden = await form_of(client, "typed")
    response = await client.post(
        "/workflows/typed/runs", data=hidden | {"input.title": "t", "input.count": ""}
    )
    assert response.status_code == 303, response.text
    run_id = response.headers["location"].removeprefix("/runs/")
    run = await typed_web.services.engine.store.get_run(run_id, tenant="acme")
    assert run.inputs["loud"] is False
    assert (run.inputs["count"], run.inputs["tags"]) == (3, ["a", "b"])


async def test_bad_inputs_show_the_form_again_with_the_message_and_the_values(
    typed_web: Web,
) -> None:
    client = await typed_web.signed_in("acme", "operator")
    _, hidden = await form_of(client, "typed")
    typed = {"input.count": "many", "input.tags": "not <json>", "input.loud": "true"}
    response = await client.post("/workflows/typed/runs", data=hidden | typed)
    assert response.status_code == 422
    page = response.text
    assert "input &#39;count&#39; must be an integer, got &#39;many&#39;" in page
    assert "missing required input &#39;title&#39; (string)" in page
    assert "input &#39;tags&#39; must be a list in JSON" in page
    assert 'name="input.count" value="many"' in page
    assert ">not &lt;json&gt;</textarea>" in page
    assert re.search(r'name="input.loud" value="true" checked>', page)
    assert await typed_web.services.engine.store.list_runs(tenant="acme") == []


async def test_submitting_the_same_form_twice_starts_one_run(web: Web) -> None:
    client = await web.signed_in("acme", "operator")
    _, hidden = await form_of(client, "echo")
    form = hidden | {"input.topic": "once"}
    first = await client.post("/workflows/echo/runs", data=form)
    second = await client.post("/workflows/echo/runs", data=form)
    assert (first.status_code, second.status_code) == (303, 303)
    assert first.headers["location"] == second.headers["location"]
    assert len(await web.services.engine.store.list_runs(tenant="acme")) == 1
    _, again = await form_of(client, "echo")
    assert again["idempotency_key"] != hidden["idempotency_key"]
    third = await client.post("/workflows/echo/runs", data=again | {"input.topic": "once"})
    assert third.headers["location"] != first.headers["location"]


async def test_two_submits_of_one_form_at_once_start_one_run(web: Web) -> None:
    client = await web.signed_in("acme", "operator")
    _, hidden = await form_of(client, "echo")
    form = hidden | {"input.topic": "race"}
    answers = await asyncio.gather(
        *(client.post("/workflows/echo/runs", data=form) for _ in range(4))
    )
    assert {answer.status_code for answer in answers} == {303}
    assert len({answer.headers["location"] for answer in answers}) == 1
    assert len(await web.services.engine.store.list_runs(tenant="acme")) == 1


async def test_the_same_form_sent_again_with_other_values_is_renewed(web: Web) -> None:
    client = await web.signed_in("acme", "operator")
    _, hidden = await form_of(client, "echo")
    first = await client.post("/workflows/echo/runs", data=hidden | {"input.topic": "one"})
    run_id = first.headers["location"].removeprefix("/runs/")
    changed = await client.post("/workflows/echo/runs", data=hidden | {"input.topic": "two"})
    assert changed.status_code == 409
    assert f"this form already started run {run_id} with other values" in changed.text
    assert 'name="input.topic" value="two"' in changed.text
    renewed = re.search(r'name="idempotency_key" value="([^"]+)"', changed.text)
    assert renewed is not None
    assert renewed.group(1) != hidden["idempotency_key"]
    again = hidden | {"idempotency_key": renewed.group(1), "input.topic": "two"}
    second = await client.post("/workflows/echo/runs", data=again)
    assert second.status_code == 303
    assert len(await web.services.engine.store.list_runs(tenant="acme")) == 2


async def test_a_viewer_sees_no_form_and_cannot_start(web: Web) -> None:
    viewer = await web.signed_in("acme", "viewer")
    page = (await viewer.get("/workflows/echo")).text
    assert 'action="/workflows/echo/runs"' not in page
    assert "operators and admins start runs" in page
    response = await viewer.post(
        "/workflows/echo/runs", data={"csrf_token": csrf_of(page), "input.topic": "x"}
    )
    assert response.status_code == 403
    assert await web.services.engine.store.list_runs(tenant="acme") == []


async def test_a_start_without_the_csrf_token_is_refused(web: Web) -> None:
    client = await web.signed_in("acme", "operator")
    missing = await client.post("/workflows/echo/runs", data={"input.topic": "x"})
    wrong = await client.post(
        "/workflows/echo/runs", data={"csrf_token": "forged", "input.topic": "x"}
    )
    assert (missing.status_code, wrong.status_code) == (403, 403)
    assert await web.services.engine.store.list_runs(tenant="acme") == []


async def test_an_unknown_workflow_is_a_404_page(web: Web) -> None:
    client = await web.signed_in("acme", "operator")
    response = await client.get("/workflows/nope")
    assert response.status_code == 404
    assert "no workflow &#39;nope&#39;" in response.text


async def test_without_a_config_the_page_says_how_to_give_one(
    isolated_settings: Settings,
) -> None:
    app = create_app(isolated_settings, project=None, workers=1)
    async with app.router.lifespan_context(app):
        _, secret = await KeyStore(app.state.services.engine.store.engine).create(
            tenant="acme", role=Role.ADMIN
        )
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            await sign_in(client, secret)
            page = (await client.get("/workflows")).text
            missing = await client.get("/workflows/echo")
    assert "This server has no config file" in page
    assert "agentmill serve --config FILE" in page
    assert "agentmill ui -c FILE" in page
    assert missing.status_code == 404


async def sign_in(client: httpx.AsyncClient, secret: str) -> None:
    form = await client.get("/login")
    data: dict[str, Any] = {"key": secret, "csrf_token": csrf_of(form.text), "next": "/"}
    assert (await client.post("/login", data=data)).status_code == 303
