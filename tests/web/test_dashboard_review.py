"""Defects found by an outside review of the dashboard, each pinned by a test."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn

from agentmill.agents.models import override_models
from agentmill.server import sse
from agentmill.server.app import create_app
from agentmill.settings import Settings
from agentmill.spec.loader import load_project_text
from agentmill.store import EventRecord
from agentmill.store.approvals import ApprovalRecord, ApprovalStatus, ApprovalStore
from agentmill.store.keys import KeyStore, Role
from agentmill.web.pages.approvals import PENDING_SHOWN
from tests.fakes import ScriptedModel
from tests.web.web_client import Web, csrf_of

SSE = {"Accept": "text/event-stream"}


async def test_a_date_filter_at_the_end_of_the_calendar_is_no_internal_error(web: Web) -> None:
    run_id = await web.start("echo", {"topic": "x"})
    client = await web.signed_in()
    response = await client.get("/?until=9999-12-31")
    assert response.status_code == 200
    assert f'data-run="{run_id}"' in response.text


async def test_a_form_posted_after_the_session_ended_signs_in_back_to_its_page(web: Web) -> None:
    run_id = await web.start("echo", {"topic": "x"})
    client = await web.signed_in()
    token = csrf_of((await client.get(f"/runs/{run_id}")).text)
    client.cookies.delete("am_session")
    response = await client.post(
        f"/runs/{run_id}/cancel",
        data={"csrf_token": token},
        headers={"Referer": f"http://test/runs/{run_id}"},
    )
    assert response.status_code == 303
    assert response.headers["location"] == f"/login?next=%2Fruns%2F{run_id}"
    elsewhere = await client.post(
        "/approvals/decide", headers={"Referer": "https://evil.example/runs/x"}
    )
    assert elsewhere.headers["location"] == "/login"


@pytest.fixture
async def served(web: Web) -> AsyncIterator[str]:
    """The `web` app (already started) served over real HTTP on a free port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(web.app, lifespan="off", log_config=None, timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        assert not serving.done(), serving.exception()
        await asyncio.sleep(0.01)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    web.services.shutting_down.set()
    server.should_exit = True
    await serving


async def _sign_in(client: httpx.AsyncClient, key: str) -> str:
    form = await client.get("/login")
    response = await client.post("/login", data={"key": key, "csrf_token": csrf_of(form.text)})
    assert response.status_code == 303, response.text
    return csrf_of((await client.get("/")).text)


async def _waiting_run(web: Web) -> str:
    run_id = await web.start("gated", {"topic": "x"})
    async with asyncio.timeout(20):
        while not await web.services.engine.approvals(tenant="acme", run_id=run_id):
            await asyncio.sleep(0.05)
    return run_id


@pytest.mark.parametrize("how", ["sign-out", "revoke"])
async def test_an_open_run_stream_ends_with_its_session(
    web: Web, served: str, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    monkeypatch.setattr(sse, "KEEPALIVE_SECONDS", 0.05)
    run_id = await _waiting_run(web)  # its stream stays open while the gate waits
    key = web.keys[("acme", "operator")]
    async with httpx.AsyncClient(base_url=served, timeout=10) as client:
        token = await _sign_in(client, key)
        stream = client.stream("GET", f"/runs/{run_id}/stream", headers=SSE)
        async with stream as response:
            assert response.status_code == 200
            lines = response.aiter_lines()
            async with asyncio.timeout(10):
                while (await anext(lines)) != "event: approval_requested":
                    pass
            if how == "sign-out":
                await client.post("/logout", data={"csrf_token": token})
            else:
                found = await web.services.keys.verify(key)
                assert found is not None
                await web.services.keys.revoke(found.id, tenant="acme")
            async with asyncio.timeout(10):  # a guard against hanging, not a timing
                rest = [line async for line in lines]
    assert "event: run_finished" not in rest
    assert web.services.streams._open == {}  # pyright: ignore[reportPrivateUsage]


async def test_a_running_runs_page_reads_only_the_streamed_text_of_its_running_steps(
    web: Web, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not every event of the run: a long run has hundreds of thousands."""
    run_id = await _waiting_run(web)
    store = web.services.engine.store
    async with asyncio.timeout(20):  # the gate's step record is written after its request
        while "sign-off" not in {s.step_id for s in await store.steps(run_id)}:
            await asyncio.sleep(0.05)
            await store.journal.commit()
    steps = await store.steps(run_id)
    assert {s.step_id: str(s.status) for s in steps}["sign-off"] == "running"
    read: list[EventRecord] = []
    events = store.events

    async def spying(*args: Any, **kwargs: Any) -> list[EventRecord]:
        found = await events(*args, **kwargs)
        read.extend(found)
        return found

    monkeypatch.setattr(store, "events", spying)
    client = await web.signed_in()
    assert (await client.get(f"/runs/{run_id}")).status_code == 200
    assert read, "the page reads the running step's events"
    assert {(e.step, e.kind) for e in read} <= {
        ("sign-off", "step_started"),
        ("sign-off", "step_output"),
    }


async def test_the_approvals_page_counts_every_waiting_gate_it_does_not_show(web: Web) -> None:
    run_id = await _waiting_run(web)
    store = ApprovalStore(web.services.engine.store.engine)
    now = time.time()
    for number in range(619):
        await store.create(
            ApprovalRecord(
                run_id=run_id, step_id=f"extra-{number}", tenant="acme",
                status=ApprovalStatus.PENDING, prompt="?", on_timeout="reject",
                created_at=now - number, expires_at=now + 3600,
            )
        )  # fmt: skip
    client = await web.signed_in("acme", "viewer")
    for path in ("/approvals", "/approvals?fragment=pending"):
        page = (await client.get(path)).text
        assert page.count('class="panel gate"') == PENDING_SHOWN
        assert f"{620 - PENDING_SHOWN} more waiting gates are not shown" in page


async def test_the_approvals_page_confirms_only_a_decision_that_was_made(web: Web) -> None:
    """Its notice comes from the query string: a crafted link must not claim a decision."""
    run_id = await _waiting_run(web)
    client = await web.signed_in("acme", "viewer")
    for gate in ("sign-off", "deploy-to-production"):
        page = (await client.get(f"/approvals?decided=approved&run={run_id}&gate={gate}")).text
        assert "Approved" not in page
    operator = await web.signed_in("acme", "operator")
    token = csrf_of((await operator.get("/approvals")).text)
    done = await operator.post(
        "/approvals/decide",
        data={"run": run_id, "gate": "sign-off", "decision": "approve", "csrf_token": token},
        follow_redirects=True,
    )
    assert f"Approved sign-off of run {run_id}." in done.text


SLASHED = """
version: 1
agents:
  writer: {model: openai:gpt-4o}
workflows:
  team/review:
    inputs: {topic: {type: string}}
    steps:
      - {id: draft, agent: writer, prompt: "draft {{ inputs.topic }}"}
"""


async def test_a_workflow_with_a_slash_in_its_name_has_its_page_and_form(
    isolated_settings: Settings,
) -> None:
    app = create_app(isolated_settings, project=load_project_text(SLASHED, "agentmill.yaml"))
    with override_models(ScriptedModel().model):
        async with app.router.lifespan_context(app):
            _, key = await KeyStore(app.state.services.engine.store.engine).create(
                tenant="acme", role=Role.OPERATOR
            )
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                await _sign_in(client, key)
                listed = (await client.get("/workflows")).text
                assert 'href="/workflows/team/review"' in listed
                page = await client.get("/workflows/team/review")
                assert page.status_code == 200, page.text
                assert 'action="/workflows/team/review/runs"' in page.text
                started = await client.post(
                    "/workflows/team/review/runs",
                    data={"csrf_token": csrf_of(page.text), "input.topic": "x"},
                )
                assert started.status_code == 303, started.text
                assert started.headers["location"].startswith("/runs/")


async def test_deeply_nested_edited_arguments_on_the_run_page_are_an_input_error(
    web: Web,
) -> None:
    run_id = await _waiting_run(web)
    client = await web.signed_in()
    token = csrf_of((await client.get(f"/runs/{run_id}")).text)
    nested = "[" * 40_000 + "]" * 40_000
    response = await client.post(
        f"/runs/{run_id}/approvals/sign-off",
        data={"decision": "approve", "arguments": nested, "csrf_token": token},
    )
    assert response.status_code == 422
    assert "the edited arguments are not valid JSON" in response.text
