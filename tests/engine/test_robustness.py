"""Faults that must end a run cleanly rather than leave it hanging (review findings)."""

from __future__ import annotations

import asyncio
import re
import time

import pytest
from sqlalchemy.exc import OperationalError

from agentmill.agents.models import override_models
from agentmill.engine.engine import Engine
from agentmill.store import EventRecord, RunStatus, StepRecord, StepStatus
from tests.engine.helpers import run_yaml
from tests.fakes import ScriptedModel

TWO = """
version: 1
agents:
  a: {model: openai:gpt-4o}
workflows:
  w:
    steps:
      - {id: one, agent: a, prompt: "one"}
      - {id: two, agent: a, needs: [one], prompt: "two"}
"""


async def test_a_model_that_cannot_be_built_fails_the_run_instead_of_hanging(
    engine: Engine,
) -> None:
    def broken(label: str) -> object:
        raise RuntimeError("provider refused to start")

    with override_models(broken):  # type: ignore[arg-type]
        run, events = await asyncio.wait_for(run_yaml(engine, TWO), timeout=20)
    assert run.status is RunStatus.FAILED
    # An unexpected exception's text stays in the log; users get an id to find it there.
    assert re.fullmatch(
        r"step 'one' failed: internal error \(id [0-9a-f]{12}\): see the worker log",
        run.error or "",
    )
    assert events[-1].kind == "run_finished"


async def test_an_output_template_failing_at_run_time_fails_the_run(engine: Engine) -> None:
    text = TWO.replace(
        "    steps:", '    outputs: {x: "{{ steps.two.output.missing }}"}\n    steps:'
    )
    with override_models(ScriptedModel().model):
        run, _ = await asyncio.wait_for(run_yaml(engine, text), timeout=20)
    assert run.status is RunStatus.FAILED
    assert (run.error or "").startswith("workflow outputs:")


FOREACH = """
version: 1
agents:
  a: {model: openai:gpt-4o}
workflows:
  w:
    inputs: {items: {type: list}}
    steps:
      - {id: each, agent: a, foreach: "{{ inputs.items }}", prompt: "{{ item.name }}"}
"""


async def test_a_foreach_item_that_cannot_render_starts_no_call(engine: Engine) -> None:
    fake = ScriptedModel(latency=0.2)
    with override_models(fake.model):
        run, events = await run_yaml(engine, FOREACH, inputs={"items": [{"name": "a"}, {}]})
    await asyncio.sleep(0.3)
    assert run.status is RunStatus.FAILED
    assert fake.calls == []
    assert events[-1].kind == "run_finished"


async def test_a_duplicate_event_does_not_poison_other_runs_rows(engine: Engine) -> None:
    journal = engine.store.journal
    now = time.time()
    event = EventRecord(run_id="x", seq=1, kind="k", step=None, attempt=0, data={}, ts=now)
    journal.add_event(event)
    await journal.commit()
    journal.add_event(event)
    journal.put_step(
        StepRecord(
            run_id="y",
            key="s",
            step_id="s",
            item_index=None,
            status=StepStatus.SUCCEEDED,
            attempt=1,
        )
    )
    await journal.commit()
    assert [s.key for s in await engine.store.steps("y")] == ["s"]
    assert len(await engine.store.events("x")) == 1


async def test_upkeep_survives_a_database_error(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0
    real = engine.store.cancel_requested

    async def flaky(run_ids: list[str]) -> set[str]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OperationalError("SELECT", {}, Exception("database is locked"))
        return await real(run_ids)

    monkeypatch.setattr(engine.store, "cancel_requested", flaky)
    await asyncio.sleep(0.8)
    assert calls >= 2
    assert engine._watcher is not None
    assert not engine._watcher.done()


async def test_follow_ends_for_a_pending_run_nobody_will_execute(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ours and pending, yet never started here: nothing will move it, so follow ends."""
    from agentmill.spec.loader import load_project_text

    async def never_start(run: object) -> None:
        return None

    monkeypatch.setattr(engine, "_start_new", never_start)
    run = await engine.submit(load_project_text(TWO, "t.yaml").spec, "w", {})
    assert (await engine.store.get_run_any(run.id)).status is RunStatus.PENDING
    events = [e async for e in engine.follow(run.id, after=10_000)]
    assert events == []


async def test_a_database_error_before_the_claim_does_not_leave_waiters_hanging(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agentmill.spec.loader import load_project_text

    real = engine.store.get_run_any
    failed = False

    async def fail_once(run_id: str) -> object:
        nonlocal failed
        if not failed:
            failed = True
            raise OperationalError("SELECT", {}, Exception("database is locked"))
        return await real(run_id)

    monkeypatch.setattr(engine.store, "get_run_any", fail_once)
    with override_models(ScriptedModel().model):
        run = await engine.submit(load_project_text(TWO, "t.yaml").spec, "w", {})
        final = await asyncio.wait_for(engine.wait(run.id), timeout=20)
    assert failed
    assert final.status is RunStatus.PENDING  # never started; `runs resume` picks it up


async def test_a_run_taken_over_by_another_owner_is_stopped_and_not_overwritten(
    engine: Engine,
) -> None:
    from agentmill.spec.loader import load_project_text

    fake = ScriptedModel(latency=2)
    with override_models(fake.model):
        run = await engine.submit(load_project_text(TWO, "t.yaml").spec, "w", {})
        while not fake.calls:
            await asyncio.sleep(0.02)
        await engine.store.update_run(run.id, owner="another-host-1-abc")
        kinds = [e.kind async for e in engine.follow(run.id)]
    assert kinds[-1] == "run_interrupted"
    taken = await engine.store.get_run(run.id)
    assert taken.owner == "another-host-1-abc"
    assert taken.status is RunStatus.RUNNING
    assert fake.calls == ["one"]
