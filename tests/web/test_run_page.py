"""A run's page in-process: what it shows (escaped), who may act, each action, its stream."""

from __future__ import annotations

import asyncio
import dataclasses
import html
import json
import re
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from pydantic_ai.exceptions import ModelHTTPError

from agentmill.server.auth import Principal
from agentmill.store import EventRecord, RunStatus
from agentmill.store.approvals import ApprovalRecord, ApprovalStatus
from agentmill.store.keys import Role
from agentmill.web.auth import WebUser
from agentmill.web.pages.run import gate_url
from agentmill.web.pages.run_view import StepPanel, as_text, diff_lines, panel_id, streamed_text
from agentmill.web.templating import _environment  # pyright: ignore[reportPrivateUsage]
from tests.web.web_client import Web

CANARY = '<script>alert(1)</script><img src=x onerror=alert(2)><a href="javascript:alert(3)">x</a>'
SSE = {"Accept": "text/event-stream"}


async def finished(web: Web, run_id: str) -> None:
    async with asyncio.timeout(30):
        await web.services.engine.wait(run_id)


async def until(check: Any, what: str) -> None:
    async with asyncio.timeout(20):
        while not await check():
            await asyncio.sleep(0.05)


async def pending_gate(web: Web, run_id: str) -> str:
    async def found() -> bool:
        gates = await web.services.engine.approvals(
            tenant="acme", run_id=run_id, status=ApprovalStatus.PENDING
        )
        return bool(gates)

    await until(found, "a pending gate")
    return "sign-off"


async def csrf(client: httpx.AsyncClient, run_id: str) -> str:
    page = (await client.get(f"/runs/{run_id}")).text
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found is not None
    return found.group(1)


def assert_no_markup(page: str) -> None:
    """The canary is in the page as text only: no tag or attribute of it survived."""
    assert "<script>alert" not in page
    assert "<img src=x" not in page
    assert 'href="javascript:' not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt;" in page


async def test_the_page_shows_the_run_its_dag_and_steps_with_untrusted_text_escaped(
    web: Web,
) -> None:
    web.model.reply = lambda prompt: f"{CANARY} for {prompt}"
    run_id = await web.start("echo", {"topic": CANARY})
    await finished(web, run_id)
    client = await web.signed_in("acme", "viewer")
    response = await client.get(f"/runs/{run_id}")

    assert response.status_code == 200
    page = response.text
    assert_no_markup(page)
    assert '<div class="dag-scroll" id="run-dag"><svg' in page
    assert 'id="dag-draft"' in page
    assert 'id="dag-polish"' in page
    for key in ("draft", "polish"):
        assert f'id="{panel_id(key)}"' in page
    assert 'class="badge status-succeeded" id="run-status"' in page
    last_seq = await web.services.engine.store.last_seq(run_id)
    assert f'data-last-seq="{last_seq}"' in page
    assert f'data-stream="/runs/{run_id}/stream?after={last_seq}"' in page
    assert "$0.0" in page  # the run's cost (priced calls of the scripted model)
    assert "Cancel run" not in page
    assert '<form method="post" action="/runs/' not in page
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp


async def test_a_failed_steps_error_is_shown_escaped(web: Web) -> None:
    error = ModelHTTPError(status_code=400, model_name="gpt-4o", body={"error": CANARY})
    web.model.fail = lambda prompt, call: error
    run_id = await web.start("echo", {"topic": "x"})
    await finished(web, run_id)
    client = await web.signed_in()
    page = (await client.get(f"/runs/{run_id}")).text
    assert 'class="badge status-failed" id="run-status"' in page
    assert 'class="flash error run-error"' in page
    assert "alert(1)" in page
    assert_no_markup(page)
    assert "Resume" in page  # a failed run can be resumed


async def test_another_tenants_run_is_not_found_like_a_missing_one(web: Web) -> None:
    run_id = await web.start("echo", {"topic": "x"})
    await finished(web, run_id)
    client = await web.signed_in("globex", "admin")
    missing = await client.get("/runs/" + "0" * 32)
    theirs = await client.get(f"/runs/{run_id}")
    assert missing.status_code == theirs.status_code == 404
    assert (await client.get(f"/runs/{run_id}/stream", headers=SSE)).status_code == 404
    page = (await client.get("/")).text
    form_token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert form_token is not None
    posted = await client.post(f"/runs/{run_id}/resume", data={"csrf_token": form_token.group(1)})
    assert posted.status_code == 404


async def test_a_viewer_sees_no_actions_and_its_posts_are_refused(web: Web) -> None:
    run_id = await web.start("gated", {})
    gate = await pending_gate(web, run_id)
    client = await web.signed_in("acme", "viewer")
    page = (await client.get(f"/runs/{run_id}")).text
    assert "Publish echo: draft x?" in page  # the gate is shown
    assert "<button" not in page.split('id="signout"')[1].split("</form>", 1)[1]
    token = await csrf(client, run_id)
    for path, data in (
        ("cancel", {}),
        ("resume", {}),
        ("retry", {"from_step": "draft"}),
        (f"approvals/{gate}", {"decision": "approve"}),
    ):
        response = await client.post(f"/runs/{run_id}/{path}", data={"csrf_token": token, **data})
        assert response.status_code == 403, path
    gates = await web.services.engine.approvals(tenant="acme", run_id=run_id)
    assert [g.status for g in gates] == [ApprovalStatus.PENDING]


async def test_a_post_without_the_csrf_token_is_refused(web: Web) -> None:
    run_id = await web.start("gated", {})
    await pending_gate(web, run_id)
    client = await web.signed_in("acme", "operator")
    for data in ({}, {"csrf_token": "wrong"}):
        response = await client.post(f"/runs/{run_id}/cancel", data=data)
        assert response.status_code == 403
        assert "expired" in response.text
    run = await web.services.engine.store.get_run(run_id, tenant="acme")
    assert not run.cancel_requested


async def test_cancel_then_resume_a_run(web: Web) -> None:
    web.model.latency = 30
    run_id = await web.start("echo", {"topic": "slow"})

    async def started() -> bool:
        return bool(web.model.in_flight)

    await until(started, "the model call")
    client = await web.signed_in()
    page = (await client.get(f"/runs/{run_id}")).text
    assert f'action="/runs/{run_id}/cancel"' in page
    assert f'action="/runs/{run_id}/retry"' not in page  # not while it runs
    response = await client.post(
        f"/runs/{run_id}/cancel", data={"csrf_token": await csrf(client, run_id)}
    )
    assert response.status_code == 303
    assert response.headers["location"] == f"/runs/{run_id}"
    await finished(web, run_id)
    store = web.services.engine.store
    assert (await store.get_run(run_id, tenant="acme")).status is RunStatus.CANCELLED

    web.model.latency = 0
    page = (await client.get(f"/runs/{run_id}")).text
    assert f'action="/runs/{run_id}/resume"' in page
    response = await client.post(
        f"/runs/{run_id}/resume", data={"csrf_token": await csrf(client, run_id)}
    )
    assert response.status_code == 303
    await finished(web, run_id)
    assert (await store.get_run(run_id, tenant="acme")).status is RunStatus.SUCCEEDED
    resumed = await client.post(
        f"/runs/{run_id}/resume", data={"csrf_token": await csrf(client, run_id)}
    )
    assert resumed.status_code == 409  # the engine's refusal as the error page
    assert "already succeeded" in resumed.text


async def test_retry_from_a_step_opens_the_new_run(web: Web) -> None:
    run_id = await web.start("echo", {"topic": "x"})
    await finished(web, run_id)
    calls = len(web.model.calls)
    client = await web.signed_in()
    page = (await client.get(f"/runs/{run_id}")).text
    assert '<option value="polish">polish</option>' in page
    response = await client.post(
        f"/runs/{run_id}/retry",
        data={"csrf_token": await csrf(client, run_id), "from_step": "polish"},
    )
    assert response.status_code == 303
    new_id = response.headers["location"].removeprefix("/runs/")
    assert new_id != run_id
    await finished(web, new_id)
    assert len(web.model.calls) == calls + 1  # draft's output reused, polish called again
    page = (await client.get(f"/runs/{new_id}")).text
    assert f'href="/runs/{run_id}"' in page  # retried from
    unknown = await client.post(
        f"/runs/{run_id}/retry",
        data={"csrf_token": await csrf(client, run_id), "from_step": "nope"},
    )
    assert unknown.status_code == 422
    assert "has no step" in unknown.text


async def test_approve_a_gate_from_the_run_page(web: Web) -> None:
    run_id = await web.start("gated", {})
    gate = await pending_gate(web, run_id)
    client = await web.signed_in()
    page = (await client.get(f"/runs/{run_id}")).text
    assert f'action="/runs/{run_id}/approvals/{gate}"' in page
    assert 'class="dag-node state-waiting kind-gate' in page
    response = await client.post(
        f"/runs/{run_id}/approvals/{gate}",
        data={"csrf_token": await csrf(client, run_id), "decision": "approve", "comment": "ok"},
    )
    assert response.status_code == 303
    await finished(web, run_id)
    store = web.services.engine.store
    assert (await store.get_run(run_id, tenant="acme")).status is RunStatus.SUCCEEDED
    (decided,) = await web.services.engine.approvals(tenant="acme", run_id=run_id)
    assert (decided.status, decided.comment) == (ApprovalStatus.APPROVED, "ok")
    assert decided.decided_by == web.keys[("acme", "operator")].split("_")[1]
    again = await client.post(
        f"/runs/{run_id}/approvals/{gate}",
        data={"csrf_token": await csrf(client, run_id), "decision": "reject"},
    )
    assert again.status_code == 409


async def test_reject_with_edited_arguments_that_are_not_json_is_an_input_error(
    web: Web,
) -> None:
    run_id = await web.start("gated", {})
    gate = await pending_gate(web, run_id)
    client = await web.signed_in()
    response = await client.post(
        f"/runs/{run_id}/approvals/{gate}",
        data={"csrf_token": await csrf(client, run_id), "decision": "approve", "arguments": "{"},
    )
    assert response.status_code == 422
    assert "not valid JSON" in response.text
    gates = await web.services.engine.approvals(tenant="acme", run_id=run_id)
    assert [g.status for g in gates] == [ApprovalStatus.PENDING]


async def test_the_summary_fragment_is_the_header_and_actions_only(web: Web) -> None:
    run_id = await web.start("echo", {"topic": "x"})
    await finished(web, run_id)
    client = await web.signed_in()
    fragment = (await client.get(f"/runs/{run_id}?fragment=summary")).text
    assert fragment.lstrip().startswith('<section id="run-summary"')
    assert "<html" not in fragment
    assert 'id="run-dag"' in fragment
    assert (await client.get(f"/runs/{run_id}?fragment=other")).status_code == 422


# the stream


def frames(body: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for block in body.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if line and line[0] != ":")
        if lines:
            event = json.loads(lines["data"])
            assert (int(lines["id"]), lines["event"]) == (event["seq"], event["kind"])
            found.append(event)
    return found


async def test_the_stream_sends_history_then_live_events_and_resumes(web: Web) -> None:
    web.model.latency = 0.3
    run_id = await web.start("echo", {"topic": "x"})
    client = await web.signed_in("acme", "viewer")
    live = await client.get(f"/runs/{run_id}/stream", headers=SSE)  # buffered until the end
    assert live.status_code == 200
    assert live.headers["content-type"].startswith("text/event-stream")
    events = frames(live.text)
    last = await web.services.engine.store.last_seq(run_id)
    assert [e["seq"] for e in events] == list(range(1, last + 1))
    assert events[-1]["kind"] == "run_finished"
    resumed = await client.get(
        f"/runs/{run_id}/stream?after=1", headers={**SSE, "Last-Event-ID": "3"}
    )
    assert [e["seq"] for e in frames(resumed.text)] == list(range(4, last + 1))
    over = await client.get(f"/runs/{run_id}/stream?after={last}", headers=SSE)
    assert over.status_code == 204


async def test_the_stream_needs_a_session(web: Web) -> None:
    run_id = await web.start("echo", {"topic": "x"})
    await finished(web, run_id)
    response = await web.client().get(f"/runs/{run_id}/stream", headers=SSE)
    assert response.status_code == 303
    assert response.headers["location"].startswith("/login")


# pieces


def event(seq: int, kind: str, attempt: int, text: str = "") -> EventRecord:
    data: dict[str, Any] = {"text": text} if kind == "step_output" else {}
    return EventRecord(
        run_id="r", seq=seq, kind=kind, step="draft", attempt=attempt, data=data, ts=0.0
    )


def test_streamed_text_keeps_only_the_latest_attempt() -> None:
    found = streamed_text(
        [
            event(1, "step_started", 1),
            event(2, "step_output", 1, "old "),
            event(3, "step_started", 2),
            event(4, "step_output", 2, "new "),
            event(5, "step_output", 2, "text"),
        ]
    )
    assert found == {"draft": (2, "new text")}


@pytest.mark.parametrize(
    ("line", "kind"),
    [("+added", "add"), ("-gone", "del"), ("@@ -1 +1 @@", "hunk"), ("+++ b/x", "file"),
     (" same", "ctx")],
)  # fmt: skip
def test_diff_lines_are_classified(line: str, kind: str) -> None:
    assert [d.kind for d in diff_lines(line)] == [kind]


async def test_a_cli_steps_diff_is_shown_as_coloured_text(web: Web) -> None:
    run_id = await web.start("echo", {"topic": "x"})
    await finished(web, run_id)
    store = web.services.engine.store
    draft = next(step for step in await store.steps(run_id) if step.key == "draft")
    patch = (
        "diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1 +1 @@\n"
        "-<script>old()</script>\n+<img src=x onerror=alert(1)>\n same"
    )
    diff = {"files": ["x"], "stat": "1 file changed", "patch": patch, "truncated": False}
    store.journal.put_step(dataclasses.replace(draft, details={"diff": diff}))
    await store.journal.commit()
    client = await web.signed_in("acme", "viewer")
    page = (await client.get(f"/runs/{run_id}")).text
    assert '<span class="diff-del">-&lt;script&gt;old()&lt;/script&gt;</span>' in page
    assert '<span class="diff-add">+&lt;img src=x onerror=alert(1)&gt;</span>' in page
    assert '<span class="diff-hunk">@@ -1 +1 @@</span>' in page
    assert '<span class="diff-ctx"> same</span>' in page
    assert "1 file changed" in page


async def test_a_tool_call_gate_is_posted_to_its_encoded_id(web: Web) -> None:
    run_id = await web.start("gated", {})
    await pending_gate(web, run_id)
    client = await web.signed_in()
    response = await client.post(
        f"/runs/{run_id}/approvals/{quote('draft#t1.1', safe='')}",
        data={"csrf_token": await csrf(client, run_id), "decision": "approve"},
    )
    assert response.status_code in (404, 409)
    assert "draft#t1.1" in html.unescape(response.text)  # the engine's answer, not a routing 404


def test_a_tool_call_gate_shows_tool_arguments_reason_and_an_arguments_field() -> None:
    gate = ApprovalRecord(
        run_id="r1", step_id="look#t1.1", tenant="acme", status=ApprovalStatus.PENDING,
        prompt="Run lookup?", on_timeout="reject", created_at=0.0, expires_at=3600.0,
        tool="lookup", arguments={"query": CANARY}, reason=CANARY,
    )  # fmt: skip
    panel = StepPanel(key="look", step_id="look", state="waiting", gates=[gate])
    user = WebUser(
        principal=Principal(key_id="k", tenant="acme", role=Role.OPERATOR),
        csrf="token", token="t", key_id="k",
    )  # fmt: skip
    rendered = _environment().get_template("_run_step.html").render(
        panel=panel, run=SimpleNamespace(id="r1"), user=user, may_operate=True,
        csrf_field="csrf_token", as_text=as_text, gate_url=gate_url,
    )  # fmt: skip
    assert 'action="/runs/r1/approvals/look%23t1.1"' in rendered
    assert '<dd class="gate-tool">lookup</dd>' in rendered
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in rendered
    assert "<script>" not in rendered
    assert 'name="arguments"' in rendered
