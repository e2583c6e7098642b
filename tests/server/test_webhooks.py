"""GitHub webhooks: signatures, limits, deduplication, triggers and concurrency keys."""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
import sqlalchemy as sa
import uvicorn
from pydantic import SecretStr

from agentmill.server.app import create_app
from agentmill.server.github import Delivery, event_matches, plan_runs, sign, verify_signature
from agentmill.server.limits import MAX_JSON_DEPTH
from agentmill.server.services import Services
from agentmill.settings import Settings
from agentmill.spec.loader import load_project_text
from agentmill.store.deliveries import DeliveryStore
from agentmill.store.tables import deliveries
from tests.fakes import ScriptedModel

SECRET = "test-webhook-secret"
URL = "/v1/webhooks/github"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "webhooks.md"

PROJECT = """
version: 1
agents:
  writer: {model: openai:gpt-4o}
workflows:
  review:
    inputs: {repo: {type: string}, number: {type: integer}, title: {type: string}}
    steps:
      - id: review
        agent: writer
        prompt: "review {{ inputs.repo }}#{{ inputs.number }} {{ inputs.title }}"
  build:
    inputs: {ref: {type: string}}
    steps:
      - {id: build, agent: writer, prompt: "build {{ inputs.ref }}"}
  triage:
    inputs: {label: {type: string}}
    steps:
      - {id: triage, agent: writer, prompt: "triage {{ inputs.label }}"}
triggers:
  - github:
      events: [pull_request.opened, pull_request.synchronize]
      workflow: review
      inputs:
        repo: "{{ payload.repository.full_name }}"
        number: "{{ payload.pull_request.number }}"
        title: "{{ payload.pull_request.title }}"
  - github:
      events: [push]
      workflow: build
      inputs: {ref: "{{ payload.ref }}"}
      concurrency: {mode: queue}
  - github:
      events: [issues.labeled]
      workflow: triage
      inputs: {label: "{{ payload.label.name }}"}
"""


@dataclass
class Hook:
    """A client of the app; delivery ids are made unique to the tenant (PostgreSQL is shared
    by the whole session)."""

    client: httpx.AsyncClient
    services: Services

    @property
    def tenant(self) -> str:
        return self.services.settings.github_webhook_tenant

    def id(self, delivery: str) -> str:
        return f"{self.tenant}-{delivery}"

    async def deliver(
        self,
        event: str,
        payload: dict[str, Any] | bytes,
        *,
        delivery: str = "d-1",
        secret: str = SECRET,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        sent = {
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": self.id(delivery),
            "X-Hub-Signature-256": sign(secret, body),
            "Content-Type": "application/json",
            **(headers or {}),
        }
        return await self.client.post(URL, content=body, headers=sent)

    async def runs(self) -> list[Any]:
        return await self.services.engine.store.list_runs(tenant=self.tenant)

    def count(self, outcome: str) -> float:
        labels = {"source": "github", "outcome": outcome}
        value = self.services.metrics.registry.get_sample_value(
            "agentmill_webhook_deliveries_total", labels
        )
        return value or 0.0


@asynccontextmanager
async def running(settings: Settings) -> AsyncGenerator[Hook]:
    """The app in-process (httpx's ASGI transport)."""
    project = load_project_text(PROJECT, "agentmill.yaml")
    app = create_app(settings, project=project, workers=4)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield Hook(client=client, services=app.state.services)


@asynccontextmanager
async def serving_http(settings: Settings) -> AsyncGenerator[Hook]:
    """The app behind a real uvicorn server on a free port, for what HTTP itself decides."""
    project = load_project_text(PROJECT, "agentmill.yaml")
    app = create_app(settings, project=project, workers=4)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            assert not task.done(), "uvicorn did not start"
            await asyncio.sleep(0.02)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            yield Hook(client=client, services=app.state.services)
    finally:
        server.should_exit = True
        await task


@pytest.fixture
def hook_settings(isolated_settings: Settings) -> Settings:
    tenant = f"t{uuid.uuid4().hex[:8]}"
    return isolated_settings.model_copy(
        update={"github_webhook_secret": SecretStr(SECRET), "github_webhook_tenant": tenant}
    )


@pytest.fixture
async def hook(hook_settings: Settings, scripted: ScriptedModel) -> AsyncIterator[Hook]:
    async with running(hook_settings) as found:
        yield found


def pull_request(action: str = "opened", number: int = 7, title: str = "Fix it") -> dict[str, Any]:
    return {
        "action": action,
        "repository": {"full_name": "octo/repo"},
        "pull_request": {"number": number, "title": title},
    }


def push(ref: str = "refs/heads/main") -> dict[str, Any]:
    return {"ref": ref, "repository": {"full_name": "octo/repo"}}


# signatures (pure)


def test_github_published_test_vector() -> None:
    # From GitHub's docs, "Validating webhook deliveries".
    secret = "It's a Secret to Everybody"
    expected = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    assert sign(secret, b"Hello, World!") == expected
    assert verify_signature(secret, b"Hello, World!", expected)
    assert not verify_signature(secret, b"Hello, World?", expected)
    assert not verify_signature("another secret", b"Hello, World!", expected)


def test_signature_needs_the_sha256_prefix() -> None:
    digest = sign(SECRET, b"x").removeprefix("sha256=")
    assert not verify_signature(SECRET, b"x", digest)
    assert not verify_signature(SECRET, b"x", f"sha1={digest}")
    assert not verify_signature(SECRET, b"x", None)
    assert not verify_signature("", b"x", sign("", b"x"))


def test_event_patterns_with_and_without_action() -> None:
    assert event_matches(["pull_request"], "pull_request", "closed")
    assert event_matches(["pull_request.opened"], "pull_request", "opened")
    assert not event_matches(["pull_request.opened"], "pull_request", "closed")
    assert not event_matches(["pull_request.opened"], "push", None)
    assert event_matches(["push"], "push", None)


def test_a_render_error_skips_only_that_trigger() -> None:
    project = load_project_text(PROJECT, "agentmill.yaml").spec
    delivery = Delivery(id="x", event="issues", payload={"action": "labeled"})
    planned, skipped = plan_runs(project.triggers, delivery)
    assert planned == []
    assert [s.workflow for s in skipped] == ["triage"]
    assert "payload.label" in skipped[0].reason


def test_the_example_in_the_docs_is_valid_and_plans_a_review() -> None:
    text = DOCS.read_text()
    example = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    project = load_project_text(example, "webhooks.md").spec
    payload = {
        **pull_request("synchronize", number=12, title="Tidy"),
        "pull_request": {"number": 12, "title": "Tidy", "labels": [{"name": "bug"}]},
    }
    delivery = Delivery(id="x", event="pull_request", payload=payload)
    [review], skipped = plan_runs(project.triggers, delivery)
    assert skipped == []
    assert review.inputs == {
        "repo": "octo/repo",
        "number": "12",
        "title": "Tidy",
        "labels": '["bug"]',
    }
    assert review.concurrency_key == "github:review:octo/repo#12"
    assert review.concurrency_mode == "supersede"
    assert review.idempotency_key == "github:x:0"


def test_the_default_concurrency_key_covers_pushes_and_other_events() -> None:
    project = load_project_text(PROJECT, "agentmill.yaml").spec
    [build], _ = plan_runs(project.triggers, Delivery(id="d", event="push", payload=push()))
    assert build.concurrency_key == "github:build:octo/repo#refs/heads/main"
    labeled = {"action": "labeled", "label": {"name": "bug"}, "repository": {"full_name": "o/r"}}
    [triage], _ = plan_runs(project.triggers, Delivery(id="d9", event="issues", payload=labeled))
    assert triage.concurrency_key == "github:triage:o/r#d9"


# refusals


async def test_missing_wrong_and_sha1_signatures_are_refused(hook: Hook) -> None:
    body = json.dumps(push()).encode()
    digest = sign(SECRET, body).removeprefix("sha256=")
    for value in (None, sign("wrong secret", body), f"sha1={digest}", digest):
        headers = {"X-GitHub-Event": "push", "X-GitHub-Delivery": "d-1"}
        if value is not None:
            headers["X-Hub-Signature-256"] = value
        response = await hook.client.post(URL, content=body, headers=headers)
        assert response.status_code == 401, value
        problem = response.json()
        assert problem["type"] == "urn:agentmill:problem:bad-signature"
        assert SECRET not in response.text
    assert hook.count("rejected") == 4
    assert await hook.runs() == []


async def test_a_signature_over_another_body_is_refused(hook: Hook) -> None:
    signed = json.dumps(push("refs/heads/main")).encode()
    sent = json.dumps(push("refs/heads/evil")).encode()
    headers = {
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": "d-1",
        "X-Hub-Signature-256": sign(SECRET, signed),
    }
    response = await hook.client.post(URL, content=sent, headers=headers)
    assert response.status_code == 401
    assert await hook.runs() == []


async def test_without_a_secret_the_server_refuses_and_says_which_setting(
    settings: Settings, scripted: ScriptedModel
) -> None:
    async with running(settings) as bare:
        response = await bare.deliver("push", push())
    assert response.status_code == 503
    assert "AGENTMILL_GITHUB_WEBHOOK_SECRET" in response.json()["detail"]


async def test_headers_and_payload_are_checked_after_the_signature(hook: Hook) -> None:
    no_event = await hook.deliver("push", push(), headers={"X-GitHub-Event": ""})
    assert no_event.status_code == 400
    assert "X-GitHub-Event" in no_event.json()["detail"]
    no_delivery = await hook.deliver("push", push(), headers={"X-GitHub-Delivery": ""})
    assert no_delivery.status_code == 400
    not_json = await hook.deliver("push", b"{not json")
    assert not_json.status_code == 400
    assert not_json.json()["type"] == "urn:agentmill:problem:invalid-payload"
    assert await hook.runs() == []


async def test_oversize_bodies_get_413_with_and_without_content_length(
    hook_settings: Settings, scripted: ScriptedModel
) -> None:
    small = hook_settings.model_copy(update={"webhook_max_bytes": 1000})
    body = json.dumps({**push(), "padding": "x" * 5000}).encode()

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 256):
            yield body[start : start + 256]

    headers = {
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": "d-1",
        "X-Hub-Signature-256": sign(SECRET, body),
    }
    async with serving_http(small) as hook:
        declared = await hook.client.post(URL, content=body, headers=headers)
        streamed = await hook.client.post(URL, content=chunks(), headers=headers)
        fits = await hook.deliver("push", push())
        assert await hook.runs() != []
    assert declared.status_code == 413
    assert streamed.status_code == 413
    assert streamed.json()["type"] == "urn:agentmill:problem:too-large"
    assert fits.status_code == 202


def nested(depth: int) -> bytes:
    """A push whose `deep` key holds lists nested `depth` deep."""
    return json.dumps(push())[:-1].encode() + b', "deep": ' + b"[" * depth + b"]" * depth + b"}"


async def test_deeply_nested_payloads_are_refused_with_400_over_real_http(
    hook_settings: Settings, scripted: ScriptedModel
) -> None:
    async with serving_http(hook_settings) as hook:
        answers = [await hook.deliver("push", nested(depth)) for depth in (1000, 100_000)]
        form = urlencode({"payload": nested(1000).decode()}).encode()
        form_type = {"Content-Type": "application/x-www-form-urlencoded"}
        answers.append(await hook.deliver("push", form, headers=form_type))
        shallow = await hook.deliver("push", nested(10))
        assert [run.workflow for run in await hook.runs()] == ["build"]
    for answer in answers:
        assert answer.status_code == 400, answer.text
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["type"] == "urn:agentmill:problem:too-deep"
        assert f"nested more than {MAX_JSON_DEPTH} levels" in answer.json()["detail"]
    assert shallow.status_code == 202


async def test_only_the_documented_content_types_are_accepted(hook: Hook) -> None:
    body = json.dumps(push()).encode()
    refused = []
    kinds = ("text/plain", None, "application/xml", "multipart/form-data")
    for number, content_type in enumerate(kinds):
        headers = {"Content-Type": content_type} if content_type else {}
        sent = {
            "X-GitHub-Event": "push",
            "X-GitHub-Delivery": hook.id(f"ct-{number}"),
            "X-Hub-Signature-256": sign(SECRET, body),
            **headers,
        }
        refused.append(await hook.client.post(URL, content=body, headers=sent))
    for answer in refused:
        assert answer.status_code == 415, answer.text
        assert answer.json()["type"] == "urn:agentmill:problem:unsupported-media-type"
        assert "application/x-www-form-urlencoded" in answer.json()["detail"]
    assert await hook.runs() == []
    charset = {"Content-Type": "application/json; charset=utf-8"}
    accepted = await hook.deliver("push", body, headers=charset)
    assert accepted.status_code == 202


# deliveries


async def test_ping_is_answered_and_starts_nothing(hook: Hook) -> None:
    response = await hook.deliver("ping", {"zen": "Keep it logically awesome.", "hook_id": 1})
    assert response.status_code == 202
    assert response.json() == {
        "delivery": hook.id("d-1"),
        "outcome": "ignored",
        "runs": [],
        "errors": [],
    }


async def test_a_pull_request_starts_the_review_with_inputs_from_the_payload(hook: Hook) -> None:
    response = await hook.deliver("pull_request", pull_request(title="Add cache"))
    assert response.status_code == 202
    answer = response.json()
    assert answer["outcome"] == "started"
    [run_id] = answer["runs"]
    run = await hook.services.engine.wait(run_id)
    assert run.tenant == hook.tenant
    assert run.workflow == "review"
    assert run.inputs == {"repo": "octo/repo", "number": 7, "title": "Add cache"}
    assert run.trigger == {
        "source": "github",
        "event": "pull_request",
        "action": "opened",
        "delivery": hook.id("d-1"),
    }
    assert run.status == "succeeded"
    assert hook.count("started") == 1


async def test_form_encoded_deliveries_are_accepted(hook: Hook) -> None:
    body = urlencode({"payload": json.dumps(push())}).encode()
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    response = await hook.deliver("push", body, headers=form)
    assert response.status_code == 202
    assert response.json()["outcome"] == "started"


async def test_an_action_the_trigger_does_not_name_is_ignored(hook: Hook) -> None:
    response = await hook.deliver("pull_request", pull_request(action="closed"))
    assert response.status_code == 202
    assert response.json()["outcome"] == "ignored"
    assert await hook.runs() == []
    assert hook.count("ignored") == 1


async def test_a_replayed_delivery_starts_one_run(hook: Hook) -> None:
    first = await hook.deliver("pull_request", pull_request(), delivery="same")
    again = await hook.deliver("pull_request", pull_request(), delivery="same")
    assert first.json()["outcome"] == "started"
    assert again.status_code == 202
    assert again.json()["outcome"] == "duplicate"
    assert again.json()["runs"] == first.json()["runs"]
    assert len(await hook.runs()) == 1
    assert hook.count("duplicate") == 1


async def test_concurrent_copies_of_a_delivery_start_one_run(hook: Hook) -> None:
    answers = await asyncio.gather(
        *(hook.deliver("pull_request", pull_request(), delivery="burst") for _ in range(5))
    )
    outcomes = sorted(answer.json()["outcome"] for answer in answers)
    assert outcomes == ["duplicate"] * 4 + ["started"]
    assert len(await hook.runs()) == 1


async def test_a_delivery_stays_a_duplicate_after_a_restart(
    hook_settings: Settings, scripted: ScriptedModel
) -> None:
    async with running(hook_settings) as hook:
        first = await hook.deliver("pull_request", pull_request(), delivery="kept")
        await hook.services.engine.wait(first.json()["runs"][0])
    async with running(hook_settings) as restarted:
        again = await restarted.deliver("pull_request", pull_request(), delivery="kept")
        assert again.json()["outcome"] == "duplicate"
        assert again.json()["runs"] == first.json()["runs"]
        assert len(await restarted.runs()) == 1


async def test_a_delivery_whose_processing_died_is_taken_again_once(hook: Hook) -> None:
    store = DeliveryStore(hook.services.engine.store.engine, tenant=hook.tenant)
    # A copy is still being processed (claimed just now): a duplicate.
    await store.claim("github", hook.id("died-early"), event="push")
    busy = await hook.deliver("push", push(), delivery="died-early")
    assert busy.json()["outcome"] == "duplicate"
    # The process died before submitting: past the lease, a redelivery starts the run.
    await _expire(hook, "died-early")
    retried = await hook.deliver("push", push(), delivery="died-early")
    assert retried.json()["outcome"] == "started"
    # It died after submitting but before recording: the same run is found, not a second one.
    await _expire(hook, "died-early", outcome="processing")
    again = await hook.deliver("push", push(), delivery="died-early")
    assert again.json()["outcome"] == "started"
    assert again.json()["runs"] == retried.json()["runs"]
    assert len(await hook.runs()) == 1
    record = await store.get("github", hook.id("died-early"))
    assert record is not None
    assert record.outcome == "started"


async def _expire(hook: Hook, delivery: str, *, outcome: str | None = None) -> None:
    values: dict[str, Any] = {"received_at": deliveries.c.received_at - 3600}
    if outcome is not None:
        values["outcome"] = outcome
    query = deliveries.update().where(deliveries.c.id == hook.id(delivery)).values(**values)
    async with hook.services.engine.store.engine.begin() as conn:
        await conn.execute(query)


async def test_a_trigger_that_cannot_render_answers_422_and_may_be_redelivered(
    hook: Hook,
) -> None:
    payload = {"action": "labeled", "issue": {"number": 1}, "repository": {"full_name": "o/r"}}
    response = await hook.deliver("issues", payload, delivery="bad")
    assert response.status_code == 422
    problem = response.json()
    assert problem["errors"][0]["workflow"] == "triage"
    assert "payload.label" in problem["errors"][0]["message"]
    assert hook.count("error") == 1
    # An error is not final: the redelivery (after a config fix) is processed again.
    fixed = {**payload, "label": {"name": "bug"}}
    retried = await hook.deliver("issues", fixed, delivery="bad")
    assert retried.json()["outcome"] == "started"


# concurrency keys


async def test_a_new_push_to_a_pull_request_supersedes_the_running_review(
    hook: Hook, scripted: ScriptedModel
) -> None:
    scripted.latency = 0.5
    first = await hook.deliver("pull_request", pull_request(), delivery="p1")
    [first_id] = first.json()["runs"]
    async for event in hook.services.engine.follow(first_id):
        if event.kind == "run_started":
            break
    second = await hook.deliver("pull_request", pull_request("synchronize"), delivery="p2")
    [second_id] = second.json()["runs"]
    engine = hook.services.engine
    assert (await engine.wait(first_id)).status == "cancelled"
    assert (await engine.wait(second_id)).status == "succeeded"


async def test_queue_mode_starts_the_next_push_after_the_previous_run(
    hook: Hook, scripted: ScriptedModel
) -> None:
    scripted.latency = 0.3
    first = await hook.deliver("push", push(), delivery="q1")
    second = await hook.deliver("push", push(), delivery="q2")
    [first_id], [second_id] = first.json()["runs"], second.json()["runs"]
    engine = hook.services.engine
    done_first = await engine.wait(first_id)
    done_second = await engine.wait(second_id)
    assert done_first.status == done_second.status == "succeeded"
    kinds = [event.kind for event in await engine.store.events(second_id)]
    assert kinds.index("run_queued") < kinds.index("run_started")
    assert done_first.finished_at is not None
    assert done_second.started_at is not None
    assert done_second.started_at >= done_first.finished_at


async def test_the_route_is_documented_without_an_api_key(hook: Hook) -> None:
    spec = (await hook.client.get("/openapi.json")).json()
    operation = spec["paths"][URL]["post"]
    headers = {p["name"] for p in operation["parameters"] if p["in"] == "header"}
    assert {"X-Hub-Signature-256", "X-GitHub-Event", "X-GitHub-Delivery"} <= headers
    assert "security" not in operation
    assert "application/x-www-form-urlencoded" in operation["requestBody"]["content"]
    assert {"202", "401", "413", "503"} <= set(operation["responses"])


async def test_deliveries_are_stored_with_the_settings_tenant(hook: Hook) -> None:
    await hook.deliver("push", push(), delivery="owned")
    async with hook.services.engine.store.engine.connect() as conn:
        row = (
            await conn.execute(sa.select(deliveries).where(deliveries.c.id == hook.id("owned")))
        ).one()
    assert (row.tenant, row.event, row.outcome) == (hook.tenant, "push", "started")


def test_long_keys_are_shortened_to_fit_but_stay_distinct() -> None:
    project = load_project_text(
        """
workflows:
  build:
    steps: [{id: s, agent: a, prompt: x}]
agents: {a: {model: openai:gpt-4o}}
triggers:
  - github: {events: [push], workflow: build}
""",
        "t.yaml",
    ).spec
    planned = [
        plan_runs(project.triggers, Delivery(id="d" * 200, event="push", payload=payload))[0][0]
        for payload in (
            {"repository": {"full_name": "o/" + "r" * 150}, "ref": "refs/heads/" + "b" * 200},
            {"repository": {"full_name": "o/" + "r" * 150}, "ref": "refs/heads/" + "c" * 200},
        )
    ]
    keys = [run.concurrency_key or "" for run in planned]
    assert all(len(key) <= 300 for key in keys)
    assert keys[0] != keys[1]
    assert all(len(run.idempotency_key) <= 200 for run in planned)
