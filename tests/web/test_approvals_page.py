"""The approvals page in-process: the tenant's waiting gates, decided from the page by
operators (with a comment, a tool call's edited arguments), refused to viewers, other
tenants and forms without the session's CSRF token; untrusted text shown as text."""

# ruff: noqa: F811  (the `web` fixture is imported, then named by each test)

from __future__ import annotations

import asyncio
import html
import re
import time
from pathlib import Path
from typing import Any

import httpx
from markupsafe import escape

from agentmill.store import RunStatus, StepStatus
from agentmill.store.approvals import ApprovalRecord, ApprovalStatus, ApprovalStore
from agentmill.store.keys import parse_key
from tests.engine.tool_project import requested, scripted, tool_project
from tests.web.web_client import Web, csrf_of, web  # noqa: F401  # pyright: ignore[reportUnusedImport]

CANARY = (
    '<script>alert(1)</script><img src=x onerror="alert(2)"><a href="javascript:alert(3)">x</a>'
)


async def waiting(web: Web, run_id: str, tenant: str = "acme") -> ApprovalRecord:
    """The run's first gate once the run has reached it."""
    async with asyncio.timeout(30):
        while True:
            rows = await web.services.engine.approvals(tenant=tenant, run_id=run_id)
            if rows and rows[0].status is ApprovalStatus.PENDING:
                return rows[0]
            await asyncio.sleep(0.05)


async def gated(web: Web, tenant: str = "acme", topic: str = "x") -> str:
    run_id = await web.start("gated", {"topic": topic}, tenant=tenant)
    await waiting(web, run_id, tenant)
    return run_id


async def decide(
    client: httpx.AsyncClient, run_id: str, gate: str, decision: str, **fields: str
) -> httpx.Response:
    page = await client.get("/approvals")
    data = {"csrf_token": csrf_of(page.text), "run": run_id, "gate": gate, "decision": decision}
    return await client.post("/approvals/decide", data=data | fields)


def gates_on(page: str) -> list[tuple[str, str]]:
    """(run, gate) of each waiting gate's card."""
    found = re.findall(r'<article class="panel gate" data-run="([^"]+)" data-gate="([^"]+)"', page)
    return [(run, html.unescape(gate)) for run, gate in found]


async def test_a_waiting_gate_is_listed_with_what_it_asks_and_its_deadline(web: Web) -> None:
    run_id = await gated(web)
    client = await web.signed_in("acme", "viewer")
    response = await client.get("/approvals")
    assert response.status_code == 200
    page = response.text
    assert gates_on(page) == [(run_id, "sign-off")]
    assert "Publish echo: draft x?" in page
    assert f'href="/runs/{run_id}"' in page
    assert "<strong>gated</strong>" in page
    assert "operator, admin may decide" in page
    assert "it counts as <strong>rejected</strong>" in page
    # viewers see no forms
    assert 'action="/approvals/decide"' not in page
    assert "you see them but cannot decide" in page
    fragment = await client.get("/approvals?fragment=pending")
    assert fragment.text.lstrip().startswith('<section id="approvals-pending"')
    assert 'hx-trigger="every 3s"' in fragment.text
    assert gates_on(fragment.text) == [(run_id, "sign-off")]


async def test_another_tenants_gates_are_neither_listed_nor_decided(web: Web) -> None:
    ours = await gated(web, "acme")
    theirs = await gated(web, "globex")
    acme = await web.signed_in("acme", "operator")
    assert gates_on((await acme.get("/approvals")).text) == [(ours, "sign-off")]
    refused = await decide(acme, theirs, "sign-off", "approve")
    assert refused.status_code == 404
    assert "no run with id" in refused.text
    row = await ApprovalStore(web.services.engine.store.engine).get(theirs, "sign-off")
    assert row is not None
    assert row.status is ApprovalStatus.PENDING


async def test_approving_continues_the_run_and_records_who_and_why(web: Web) -> None:
    run_id = await gated(web)
    client = await web.signed_in("acme", "operator")
    response = await decide(client, run_id, "sign-off", "approve", comment="ship <it>")
    assert response.status_code == 303
    assert response.headers["location"] == f"/approvals?decided=approved&run={run_id}&gate=sign-off"
    final = await asyncio.wait_for(web.services.engine.wait(run_id), 30)
    assert final.status is RunStatus.SUCCEEDED
    steps = {s.key: s.status for s in await web.services.engine.store.steps(run_id)}
    assert steps["publish"] is StepStatus.SUCCEEDED
    row = await ApprovalStore(web.services.engine.store.engine).get(run_id, "sign-off")
    assert row is not None
    assert (row.status, row.comment) == (ApprovalStatus.APPROVED, "ship <it>")
    assert row.decided_by == parse_key(web.keys[("acme", "operator")])
    page = (await client.get(response.headers["location"])).text
    assert f"Approved sign-off of run {run_id}." in page
    assert gates_on(page) == []
    assert "ship &lt;it&gt;" in page  # recently decided, with its comment
    assert '<span class="badge status-approved">approved</span>' in page


async def test_rejecting_skips_the_gated_step(web: Web) -> None:
    run_id = await gated(web)
    client = await web.signed_in("acme", "admin")
    response = await decide(client, run_id, "sign-off", "reject", comment="not yet")
    assert response.status_code == 303
    final = await asyncio.wait_for(web.services.engine.wait(run_id), 30)
    assert final.status is RunStatus.SUCCEEDED
    steps = {s.key: s.status for s in await web.services.engine.store.steps(run_id)}
    assert steps.get("publish") in (None, StepStatus.SKIPPED)
    assert not any(call.startswith("publish") for call in web.model.calls)
    row = await ApprovalStore(web.services.engine.store.engine).get(run_id, "sign-off")
    assert row is not None
    assert row.status is ApprovalStatus.REJECTED


async def test_a_viewer_cannot_decide(web: Web) -> None:
    run_id = await gated(web)
    viewer = await web.signed_in("acme", "viewer")
    response = await decide(viewer, run_id, "sign-off", "approve")
    assert response.status_code == 403
    assert "viewer role" in response.text
    row = await ApprovalStore(web.services.engine.store.engine).get(run_id, "sign-off")
    assert row is not None
    assert row.status is ApprovalStatus.PENDING


async def test_a_decision_without_the_csrf_token_is_refused(web: Web) -> None:
    run_id = await gated(web)
    client = await web.signed_in("acme", "operator")
    data = {"run": run_id, "gate": "sign-off", "decision": "approve"}
    missing = await client.post("/approvals/decide", data=data)
    wrong = await client.post("/approvals/decide", data=data | {"csrf_token": "forged"})
    assert (missing.status_code, wrong.status_code) == (403, 403)
    row = await ApprovalStore(web.services.engine.store.engine).get(run_id, "sign-off")
    assert row is not None
    assert row.status is ApprovalStatus.PENDING


async def test_a_decided_gate_cannot_be_decided_again(web: Web) -> None:
    run_id = await gated(web)
    client = await web.signed_in("acme", "operator")
    assert (await decide(client, run_id, "sign-off", "approve")).status_code == 303
    again = await decide(client, run_id, "sign-off", "reject")
    assert again.status_code == 409
    assert "was already approved" in again.text


async def test_a_tool_call_is_approved_with_edited_arguments(web: Web, tmp_path: Path) -> None:
    engine = web.services.engine
    project = tool_project(tmp_path)
    with scripted(project):
        run = await project.submit(engine, tenant="acme")
        await requested(engine, run.id, "work#t1.1")
        client = await web.signed_in("acme", "operator")
        page = (await client.get("/approvals")).text
        assert gates_on(page) == [(run.id, "work#t1.1")]
        assert "<code>save_note</code>" in page
        assert "I keep the notes notes." in page
        assert "&#34;path&#34;: &#34;notes.md&#34;" in page  # the arguments, escaped JSON
        assert 'name="arguments"' in page
        edited = '{"path": "edited.md", "text": "hi"}'
        response = await decide(client, run.id, "work#t1.1", "approve", arguments=edited)
        assert response.status_code == 303, response.text
        final = await asyncio.wait_for(engine.wait(run.id), 30)
    assert final.status is RunStatus.SUCCEEDED, final.error
    assert [(c["path"], c["text"]) for c in project.executed()] == [("edited.md", "hi")]
    row = await ApprovalStore(engine.store.engine).get(run.id, "work#t1.1")
    assert row is not None
    assert row.edited_arguments == {"path": "edited.md", "text": "hi"}


async def test_unchanged_arguments_approve_the_models_call(web: Web, tmp_path: Path) -> None:
    engine = web.services.engine
    project = tool_project(tmp_path)
    with scripted(project):
        run = await project.submit(engine, tenant="acme")
        await requested(engine, run.id, "work#t1.1")
        client = await web.signed_in("acme", "operator")
        shown = '{\n  "path": "notes.md",\n  "text": "hello"\n}'
        response = await decide(client, run.id, "work#t1.1", "approve", arguments=shown)
        assert response.status_code == 303, response.text
        await asyncio.wait_for(engine.wait(run.id), 30)
    row = await ApprovalStore(engine.store.engine).get(run.id, "work#t1.1")
    assert row is not None
    assert (row.status, row.edited_arguments) == (ApprovalStatus.APPROVED, None)


async def test_edited_arguments_that_are_not_json_show_the_page_again(
    web: Web, tmp_path: Path
) -> None:
    engine = web.services.engine
    project = tool_project(tmp_path)
    with scripted(project):
        run = await project.submit(engine, tenant="acme")
        await requested(engine, run.id, "work#t1.1")
        client = await web.signed_in("acme", "operator")
        typed = '{"path": <b>oops'
        response = await decide(
            client, run.id, "work#t1.1", "approve", arguments=typed, comment="my note"
        )
        assert response.status_code == 422
        assert "the edited arguments are not valid JSON" in response.text
        assert str(escape(typed)) in response.text  # kept, escaped
        assert 'value="my note"' in response.text
        not_an_object = await decide(client, run.id, "work#t1.1", "approve", arguments="[1]")
        assert not_an_object.status_code == 422
        assert "must be a JSON object" in not_an_object.text
        row = await ApprovalStore(engine.store.engine).get(run.id, "work#t1.1")
        assert row is not None
        assert row.status is ApprovalStatus.PENDING
        await engine.cancel(run.id, tenant="acme")


async def test_untrusted_text_of_a_gate_is_shown_as_text(web: Web) -> None:
    run_id = await gated(web, topic=CANARY)
    store = ApprovalStore(web.services.engine.store.engine)
    now = time.time()
    await store.create(tool_gate(run_id, now))
    client = await web.signed_in("acme", "operator")
    page = (await client.get("/approvals")).text
    assert "<script>alert" not in page
    assert "<img src=x" not in page
    assert 'href="javascript:' not in page
    assert str(escape(CANARY)) in page  # prompt (rendered with the topic) and the model's reason
    assert "&lt;script&gt;alert(4)" in page  # in the tool's arguments
    assert "<script" not in page.replace('<script src="/static/', "")


def tool_gate(run_id: str, now: float) -> ApprovalRecord:
    arguments: dict[str, Any] = {"path": "<script>alert(4)</script>", "n": 1}
    return ApprovalRecord(
        run_id=run_id,
        step_id="draft#t1.1",
        tenant="acme",
        status=ApprovalStatus.PENDING,
        prompt="Call <b>tool</b>",
        on_timeout="fail",
        created_at=now,
        expires_at=now + 600,
        tool="<img src=x onerror=alert(5)>",
        arguments=arguments,
        reason=CANARY,
    )
