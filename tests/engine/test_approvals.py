"""Approval gates in the engine: wait, approve, reject, expire, parallel gates, reuse."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import cast

import pytest
from pydantic_ai.exceptions import ModelHTTPError

from agentmill.agents.models import override_models
from agentmill.engine.engine import Engine
from agentmill.errors import InvalidStateError, NotFoundError
from agentmill.spec.loader import load_project_text
from agentmill.store import EventRecord, RunRecord, RunStatus, StepStatus
from agentmill.store.approvals import ApprovalStatus
from tests.fakes import ScriptedModel

GATED = """
version: 1
agents:
  a: {model: openai:gpt-4o}
workflows:
  w:
    steps:
      - {id: draft, agent: a, prompt: "draft"}
      - id: sign-off
        needs: [draft]
        approval:
          prompt: "Publish {{ steps.draft.output }}?"
          timeout: TIMEOUT
          on_timeout: POLICY
      - id: publish
        agent: a
        needs: [sign-off]
        when: "{{ steps['sign-off'].approved }}"
        prompt: "publish ({{ steps['sign-off'].comment }})"
"""

PARALLEL = """
version: 1
agents:
  a: {model: openai:gpt-4o}
workflows:
  w:
    concurrency: 1
    steps:
      - {id: left, approval: {prompt: "left?"}}
      - {id: right, approval: {prompt: "right?"}}
      - {id: after-left, agent: a, needs: [left], when: "{{ steps.left.approved }}", prompt: L}
      - {id: after-right, agent: a, needs: [right], when: "{{ steps.right.approved }}", prompt: R}
"""

SEQUENTIAL = """
version: 1
workflows:
  w:
    steps:
      - {id: first, approval: {}}
      - {id: second, needs: [first], approval: {}}
"""


def gated(timeout: str = "1h", policy: str = "reject") -> str:
    return GATED.replace("TIMEOUT", timeout).replace("POLICY", policy)


async def submit(engine: Engine, text: str) -> RunRecord:
    return await engine.submit(load_project_text(text, "test.yaml").spec, "w", {})


async def until(
    engine: Engine, run_id: str, kind: str, step: str | None = None, *, after: int = 0
) -> EventRecord:
    """The first event of `kind` (for `step`) after `after` in the run's log, waiting for it."""
    follow = cast(AsyncGenerator[EventRecord], engine.follow(run_id, after=after))
    async with asyncio.timeout(20), contextlib.aclosing(follow) as events:
        async for event in events:
            if event.kind == kind and (step is None or event.step == step):
                return event
    raise AssertionError(f"the run ended without {kind} {step}")


async def finish(
    engine: Engine, run_id: str, *, after: int = 0
) -> tuple[RunRecord, list[EventRecord]]:
    """Follow the run (from after `after`) to its end."""
    async with asyncio.timeout(20):
        events = [event async for event in engine.follow(run_id, after=after)]
    return await engine.store.get_run(run_id), events


async def test_a_gate_waits_and_approval_lets_dependents_run(engine: Engine) -> None:
    fake = ScriptedModel()
    with override_models(fake.model):
        run = await submit(engine, gated())
        requested = await until(engine, run.id, "approval_requested", "sign-off")
        assert requested.data["prompt"] == "Publish echo: draft?"
        assert requested.data["expires_at"] > requested.ts + 3000
        (pending,) = await engine.approvals(status=ApprovalStatus.PENDING)
        assert (pending.run_id, pending.step_id) == (run.id, "sign-off")
        assert fake.calls == ["draft"]
        decided = await engine.decide(run.id, "sign-off", approve=True, comment="ok", by="alice")
        assert decided.status is ApprovalStatus.APPROVED
        assert (decided.decided_by, decided.comment) == ("alice", "ok")
        final, events = await finish(engine, run.id)
    assert final.status is RunStatus.SUCCEEDED
    assert fake.calls == ["draft", "publish (ok)"]
    gate = next(s for s in await engine.store.steps(run.id) if s.key == "sign-off")
    assert gate.status is StepStatus.SUCCEEDED
    assert gate.output == {"approved": True, "comment": "ok", "by": "alice", "status": "approved"}
    assert [e.kind for e in events if e.step == "sign-off"] == [
        "step_started",
        "approval_requested",
        "approval_decided",
        "step_finished",
    ]
    assert await engine.approvals(status=ApprovalStatus.PENDING) == []


async def test_rejection_skips_the_dependents_that_need_approval(engine: Engine) -> None:
    fake = ScriptedModel()
    with override_models(fake.model):
        run = await submit(engine, gated())
        await until(engine, run.id, "approval_requested", "sign-off")
        await engine.decide(run.id, "sign-off", approve=False, comment="no", by="bob")
        final, events = await finish(engine, run.id)
    assert final.status is RunStatus.SUCCEEDED
    assert fake.calls == ["draft"]
    assert [e.kind for e in events if e.step == "publish"] == ["step_skipped"]
    decided = next(e for e in events if e.kind == "approval_decided")
    assert decided.data == {"approved": False, "comment": "no", "by": "bob", "status": "rejected"}


async def test_gates_in_parallel_branches_wait_and_are_decided_independently(
    engine: Engine,
) -> None:
    fake = ScriptedModel()
    with override_models(fake.model):
        run = await submit(engine, PARALLEL)
        await until(engine, run.id, "approval_requested", "left")
        await until(engine, run.id, "approval_requested", "right")
        pending = await engine.approvals(status=ApprovalStatus.PENDING, run_id=run.id)
        assert sorted(a.step_id for a in pending) == ["left", "right"]
        # A waiting gate holds no slot of the run's `concurrency: 1`.
        await engine.decide(run.id, "right", approve=True, by="carol")
        await until(engine, run.id, "step_finished", "after-right")
        assert fake.calls == ["R"]
        left = await engine.approvals(status=ApprovalStatus.PENDING, run_id=run.id)
        assert [a.step_id for a in left] == ["left"]
        await engine.decide(run.id, "left", approve=False, by="carol")
        final, events = await finish(engine, run.id)
    assert final.status is RunStatus.SUCCEEDED
    assert fake.calls == ["R"]
    assert [e.kind for e in events if e.step == "after-left"] == ["step_skipped"]


async def test_expiry_with_reject_counts_as_rejected(engine: Engine) -> None:
    fake = ScriptedModel()
    with override_models(fake.model):
        run = await submit(engine, gated("500ms", "reject"))
        final, events = await finish(engine, run.id)
    assert final.status is RunStatus.SUCCEEDED
    assert fake.calls == ["draft"]
    decided = next(e for e in events if e.kind == "approval_decided")
    assert decided.data == {"approved": False, "comment": None, "by": None, "status": "expired"}
    assert [e.kind for e in events if e.step == "publish"] == ["step_skipped"]
    with pytest.raises(InvalidStateError, match=r"expired at .* it can no longer be decided"):
        await engine.decide(run.id, "sign-off", approve=True, by="late")


async def test_expiry_with_fail_fails_the_step_and_a_resume_asks_again(engine: Engine) -> None:
    fake = ScriptedModel()
    with override_models(fake.model):
        run = await submit(engine, gated("500ms", "fail"))
        final, events = await finish(engine, run.id)
        assert final.status is RunStatus.FAILED
        assert "step 'sign-off' failed: no decision before the approval deadline" in (
            final.error or ""
        )
        assert [e.kind for e in events if e.step == "publish"] == ["step_blocked"]
        # Resuming the failed run asks again, with a new deadline.
        await engine.resume(run.id)
        await until(engine, run.id, "approval_requested", after=events[-1].seq)
        await engine.decide(run.id, "sign-off", approve=True, by="dave")
        final, _ = await finish(engine, run.id, after=events[-1].seq)
    assert final.status is RunStatus.SUCCEEDED
    assert fake.calls == ["draft", "publish (None)"]


async def test_a_decided_gate_is_not_asked_again_on_resume_or_retry(engine: Engine) -> None:
    def fail_first_publish(prompt: str, number: int) -> BaseException | None:
        if prompt.startswith("publish") and number == 1:
            return ModelHTTPError(status_code=400, model_name="gpt-4o", body="no")
        return None

    fake = ScriptedModel(fail=fail_first_publish)
    with override_models(fake.model):
        run = await submit(engine, gated())
        await until(engine, run.id, "approval_requested", "sign-off")
        await engine.decide(run.id, "sign-off", approve=True, comment="go", by="erin")
        final, first = await finish(engine, run.id)
        assert final.status is RunStatus.FAILED
        await engine.resume(run.id)
        final, resumed = await finish(engine, run.id, after=first[-1].seq)
        assert final.status is RunStatus.SUCCEEDED
        assert resumed[0].kind == "run_resumed"
        assert not [e for e in resumed if e.step == "sign-off"]
        retry = await engine.retry(run.id, "publish")
        again, retried = await finish(engine, retry.id)
    assert again.status is RunStatus.SUCCEEDED
    assert not [e for e in retried if e.kind == "approval_requested"]
    assert fake.calls == ["draft", "publish (go)", "publish (go)", "publish (go)"]


async def test_a_decision_is_recorded_once_and_refusals_say_why(engine: Engine) -> None:
    run = await submit(engine, SEQUENTIAL)
    await until(engine, run.id, "approval_requested", "first")
    with pytest.raises(InvalidStateError, match=r"'second' of run .* is not waiting"):
        await engine.decide(run.id, "second", approve=True, by="x")
    outcomes = await asyncio.gather(
        engine.decide(run.id, "first", approve=True, by="fast"),
        engine.decide(run.id, "first", approve=False, by="slow"),
        return_exceptions=True,
    )
    refused = [o for o in outcomes if isinstance(o, InvalidStateError)]
    assert len(refused) == 1
    assert "was already approved by" in str(refused[0]) or "was already rejected by" in str(
        refused[0]
    )
    with pytest.raises(NotFoundError, match="no approval step 'nope'"):
        await engine.decide(run.id, "nope", approve=True, by="x")
    with pytest.raises(NotFoundError):
        await engine.decide(run.id, "first", approve=True, by="x", tenant="other")
    with pytest.raises(NotFoundError):
        await engine.approvals(tenant="other", run_id=run.id)
    assert await engine.approvals(tenant="other") == []
    await until(engine, run.id, "approval_requested", "second")
    await engine.cancel(run.id)


DOC = Path(__file__).parents[2] / "docs" / "config.md"


async def test_the_documented_example_runs_as_described(engine: Engine) -> None:
    match = re.search(r"<!-- test: approval-example -->\n```yaml\n(.*?)```", DOC.read_text(), re.S)
    assert match is not None
    spec = load_project_text(match.group(1), "agentmill.yaml").spec
    fake = ScriptedModel()
    with override_models(fake.model):
        run = await engine.submit(spec, "release", {})
        requested = await until(engine, run.id, "approval_requested", "sign-off")
        assert requested.data["prompt"] == "Publish these notes?\necho: Write release notes"
        assert requested.data["on_timeout"] == "reject"
        await engine.decide(run.id, "sign-off", approve=True, comment="short", by="frank")
        final, _ = await finish(engine, run.id)
    assert final.status is RunStatus.SUCCEEDED
    assert fake.calls[-1] == "Format for the blog (short): echo: Write release notes"
