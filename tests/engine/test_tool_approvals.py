"""Tool approvals through the engine: a call of a tool with `approve: true` waits at a gate
of its own (`<step key>#<call id>`) until a person approves it (as asked or with edited
arguments) or rejects it with a message the model reads; parallel gates, restarts, tenants."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Any, cast

import pytest

from agentmill.engine.engine import Engine
from agentmill.engine.tool_approvals import GateToolApprovals
from agentmill.errors import InputError, InvalidStateError, NotFoundError
from agentmill.settings import Settings
from agentmill.store import DEFAULT_TENANT, EventRecord, RunRecord, RunStatus
from agentmill.store.approvals import ApprovalStatus
from tests.conftest import started_engine
from tests.engine.tool_project import Project, requested, scripted, tool_project


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return tool_project(tmp_path)


async def finish(
    engine: Engine, run_id: str, *, after: int = 0
) -> tuple[RunRecord, list[EventRecord]]:
    async with asyncio.timeout(30):
        events = [event async for event in engine.follow(run_id, after=after)]
    return await engine.store.get_run(run_id), events


async def test_an_approved_call_runs_once_and_the_gate_shows_the_call(
    engine: Engine, project: Project
) -> None:
    with scripted(project):
        run = await project.submit(engine)
        event = await requested(engine, run.id, "work#t1.1")
        assert event.step == "work"
        assert event.data["tool"] == "save_note"
        assert event.data["reason"] == "I keep the notes notes."
        (row,) = await engine.approvals(status=ApprovalStatus.PENDING, run_id=run.id)
        assert row.step_id == "work#t1.1"
        assert row.prompt == 'Call save_note with {"path": "notes.md", "text": "hello"}'
        assert (row.tool, row.arguments) == ("save_note", {"path": "notes.md", "text": "hello"})
        assert row.reason == "I keep the notes notes."
        assert project.executed() == []
        # Waiting does not count against the step's 2 s timeout.
        await asyncio.sleep(2.5)
        decided = await engine.decide(run.id, "work#t1.1", approve=True, comment="ok", by="ann")
        assert (decided.status, decided.decided_by) == (ApprovalStatus.APPROVED, "ann")
        final, events = await finish(engine, run.id)
    assert final.status is RunStatus.SUCCEEDED, final.error
    assert final.outputs == {"work": "got ['saved notes.md']"}
    (call,) = project.executed()
    assert call == {"path": "notes.md", "text": "hello", "key": f"{run.id}/work/t1.1"}
    decided_event = next(e for e in events if e.kind == "approval_decided")
    assert decided_event.step == "work"
    assert decided_event.data["gate"] == "work#t1.1"
    assert (decided_event.data["approved"], decided_event.data["by"]) == (True, "ann")
    assert await engine.approvals(status=ApprovalStatus.PENDING, run_id=run.id) == []


async def test_a_rejected_call_does_not_run_and_the_model_reads_why(
    engine: Engine, project: Project
) -> None:
    with scripted(project):
        run = await project.submit(engine)
        await requested(engine, run.id, "work#t1.1")
        await engine.decide(
            run.id, "work#t1.1", approve=False, comment="not in this repo", by="bob"
        )
        final, _ = await finish(engine, run.id)
    assert final.status is RunStatus.SUCCEEDED, final.error
    assert project.executed() == []
    output = str((final.outputs or {})["work"])
    assert "rejected by bob: not in this repo" in output
    (row,) = await engine.approvals(run_id=run.id)
    assert (row.status, row.comment) == (ApprovalStatus.REJECTED, "not in this repo")


async def test_a_call_approved_with_edited_arguments_runs_with_them(
    engine: Engine, project: Project
) -> None:
    with scripted(project):
        run = await project.submit(engine)
        await requested(engine, run.id, "work#t1.1")
        edited = {"path": "docs/notes.md", "text": "hello, edited"}
        with pytest.raises(InputError, match="come with an approval"):
            await engine.decide(run.id, "work#t1.1", approve=False, by="cy", arguments=edited)
        await engine.decide(run.id, "work#t1.1", approve=True, by="cy", arguments=edited)
        final, events = await finish(engine, run.id)
    assert final.status is RunStatus.SUCCEEDED, final.error
    assert [(c["path"], c["text"]) for c in project.executed()] == [
        ("docs/notes.md", "hello, edited")
    ]
    (row,) = await engine.approvals(run_id=run.id)
    assert (row.arguments, row.edited_arguments) == (
        {"path": "notes.md", "text": "hello"},
        edited,
    )
    decided = next(e for e in events if e.kind == "approval_decided")
    assert decided.data["edited"] is True


async def test_edited_arguments_that_do_not_fit_the_tool_are_an_error_the_model_sees(
    engine: Engine, project: Project
) -> None:
    with scripted(project):
        run = await project.submit(engine)
        await requested(engine, run.id, "work#t1.1")
        bad = {"path": 5, "text": "hi"}
        await engine.decide(run.id, "work#t1.1", approve=True, by="cy", arguments=bad)
        final, events = await finish(engine, run.id)
    assert final.status is RunStatus.SUCCEEDED, final.error
    assert project.executed() == []
    (result,) = [e for e in events if e.kind == "step_tool_result"]
    assert "validation error" in result.data["error"]
    assert "path" in result.data["error"]  # the argument that does not fit is named


async def test_two_calls_wait_at_once_in_parallel_steps_and_are_decided_in_any_order(
    engine: Engine, project: Project
) -> None:
    with scripted(project):
        run = await project.submit(engine, "two")
        await requested(engine, run.id, "left#t1.1")
        await requested(engine, run.id, "right#t1.1")
        pending = await engine.approvals(status=ApprovalStatus.PENDING, run_id=run.id)
        assert sorted(row.step_id for row in pending) == ["left#t1.1", "right#t1.1"]
        await engine.decide(run.id, "right#t1.1", approve=True, by="dee")
        await _until(lambda: [c["path"] for c in project.executed()] == ["right.md"])
        await engine.decide(run.id, "left#t1.1", approve=False, comment="no", by="dee")
        final, _ = await finish(engine, run.id)
    assert final.status is RunStatus.SUCCEEDED, final.error
    assert [c["path"] for c in project.executed()] == ["right.md"]
    outputs = final.outputs or {}
    assert outputs["right"] == "got ['saved right.md']"
    assert "rejected by dee: no" in str(outputs["left"])


async def test_two_calls_of_one_response_wait_at_once_and_each_decision_runs_its_own(
    engine: Engine, project: Project
) -> None:
    with scripted(project):
        run = await project.submit(engine, "pair")
        await requested(engine, run.id, "work#t1.1")
        await requested(engine, run.id, "work#t1.2")
        await engine.decide(run.id, "work#t1.2", approve=True, by="gil")
        await _until(lambda: [c["path"] for c in project.executed()] == ["b.md"])
        await engine.decide(run.id, "work#t1.1", approve=True, by="gil")
        final, _ = await finish(engine, run.id)
    assert final.status is RunStatus.SUCCEEDED, final.error
    assert [(c["path"], c["key"]) for c in project.executed()] == [
        ("b.md", f"{run.id}/work/t1.2"),
        ("a.md", f"{run.id}/work/t1.1"),
    ]
    assert final.outputs == {"work": "got ['saved a.md', 'saved b.md']"}


async def test_a_restart_while_waiting_keeps_the_one_gate_and_runs_the_call_once(
    settings: Settings, project: Project
) -> None:
    with scripted(project):
        async with started_engine(settings) as first:
            run = await project.submit(first)
            await requested(first, run.id, "work#t1.1")
            (before,) = await first.approvals(run_id=run.id)
        async with started_engine(settings) as second:
            interrupted = await second.store.get_run(run.id)
            assert interrupted.status is RunStatus.INTERRUPTED
            last = (await second.store.events(run.id))[-1].seq
            await second.resume(run.id)
            again = await requested(second, run.id, "work#t1.1", after=last)
            assert again.data["expires_at"] == before.expires_at  # the same gate, same deadline
            (row,) = await second.approvals(run_id=run.id)
            assert (row.step_id, row.created_at) == (before.step_id, before.created_at)
            await second.decide(run.id, "work#t1.1", approve=True, by="eve")
            final, _ = await finish(second, run.id, after=last)
    assert final.status is RunStatus.SUCCEEDED, final.error
    assert [c["key"] for c in project.executed()] == [f"{run.id}/work/t1.1"]
    # The first model request was recorded before the wait: it is replayed, not made again.
    assert project.model_turns == ["notes 1", "notes 2"]


async def test_a_decision_made_while_no_engine_runs_the_call_is_used_on_resume(
    settings: Settings, project: Project
) -> None:
    with scripted(project):
        async with started_engine(settings) as first:
            run = await project.submit(first)
            await requested(first, run.id, "work#t1.1")
        async with started_engine(settings) as second:
            await second.decide(run.id, "work#t1.1", approve=True, by="fay")
            last = (await second.store.events(run.id))[-1].seq
            await second.resume(run.id)
            final, events = await finish(second, run.id, after=last)
    assert final.status is RunStatus.SUCCEEDED, final.error
    assert not [e for e in events if e.kind == "approval_requested"]
    assert len(project.executed()) == 1


async def test_another_tenant_cannot_see_or_decide_a_tool_call(
    engine: Engine, project: Project
) -> None:
    with scripted(project):
        run = await project.submit(engine)
        await requested(engine, run.id, "work#t1.1")
        with pytest.raises(NotFoundError):
            await engine.decide(run.id, "work#t1.1", approve=True, by="mallory", tenant="other")
        assert await engine.approvals(tenant="other") == []
        with pytest.raises(NotFoundError, match=r"no tool call 'work#t9\.9'.*waiting: work#t1\.1"):
            await engine.decide(run.id, "work#t9.9", approve=True, by="x")
        with pytest.raises(InputError, match="must be a JSON object"):
            await engine.decide(
                run.id, "work#t1.1", approve=True, by="x", arguments=cast(Any, ["a"])
            )
        await engine.decide(run.id, "work#t1.1", approve=True, by="owner")
        with pytest.raises(InvalidStateError, match=r"tool call \(save_note\) 'work#t1\.1'"):
            await engine.decide(run.id, "work#t1.1", approve=False, by="late")
        final, _ = await finish(engine, run.id)
    assert final.status is RunStatus.SUCCEEDED
    assert len(project.executed()) == 1


async def test_edited_arguments_are_refused_on_a_gate_step(
    engine: Engine, project: Project
) -> None:
    run = await project.submit(engine, "gated")
    follow = cast(AsyncGenerator[EventRecord], engine.follow(run.id))
    async with asyncio.timeout(30), contextlib.aclosing(follow) as events:
        async for event in events:
            if event.kind == "approval_requested":
                break
    with pytest.raises(InputError, match="is an approval step, not a tool call"):
        await engine.decide(run.id, "sign-off", approve=True, by="x", arguments={"a": 1})
    await engine.decide(run.id, "sign-off", approve=True, by="x")
    final, _ = await finish(engine, run.id)
    assert final.status is RunStatus.SUCCEEDED


async def test_a_call_nobody_decides_in_time_is_rejected_as_expired(engine: Engine) -> None:
    approvals = GateToolApprovals(store=engine.store, tenant=DEFAULT_TENANT, timeout=0)
    waits: list[str] = []

    async def on_wait() -> None:
        waits.append("waiting")

    decision = await approvals.decide(
        run_id="run-x",
        step="work",
        call_id="t1.1",
        tool="save_note",
        arguments={"path": "a"},
        reason="",
        on_wait=on_wait,
    )
    assert not decision.approved
    assert "expired" in decision.message
    assert waits == ["waiting"]
    again = await approvals.decide(
        run_id="run-x",
        step="work",
        call_id="t1.1",
        tool="save_note",
        arguments={"path": "a"},
        reason="",
        on_wait=on_wait,
    )
    assert (again.approved, waits) == (False, ["waiting"])  # decided: no second wait


async def _until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(30):
        while not condition():
            await asyncio.sleep(0.05)
