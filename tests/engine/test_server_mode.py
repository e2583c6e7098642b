"""Server mode: runs through the shared queue, graceful drain, adoption of dead workers' runs."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import pytest

from agentmill.agents.models import override_models
from agentmill.engine.engine import Engine
from agentmill.engine.recovery import sweep
from agentmill.settings import Settings
from agentmill.spec.loader import load_project_text
from agentmill.store import RunRecord, RunStatus, StepRecord, StepStatus, Store
from tests.fakes import ScriptedModel

CHAIN = """
version: 1
agents:
  a: {model: openai:gpt-4o}
workflows:
  w:
    steps:
      - {id: one, agent: a, prompt: "one"}
      - {id: two, agent: a, needs: [one], prompt: "two"}
      - {id: three, agent: a, needs: [two], prompt: "three"}
"""


@pytest.fixture
async def worker(isolated_settings: Settings) -> Engine:
    engine = Engine(isolated_settings)
    await engine.start(serve_workers=2)
    return engine


async def _wait_status(engine: Engine, run_id: str, *wanted: RunStatus) -> None:
    async with asyncio.timeout(20):
        while (await engine.store.get_run(run_id)).status not in wanted:
            await asyncio.sleep(0.05)


async def test_a_queued_run_is_executed_by_a_worker(worker: Engine) -> None:
    project = load_project_text(CHAIN, "w.yaml").spec
    try:
        with override_models(ScriptedModel().model):
            run = await worker.submit(project, "w", {})
            assert run.owner is None  # queued: whichever worker is free claims it
            finished = await asyncio.wait_for(worker.wait(run.id), 20)
    finally:
        await worker.stop()
    assert finished.status is RunStatus.SUCCEEDED
    assert finished.owner == worker.owner.executor_id


async def test_shutdown_lets_the_call_in_flight_finish_and_the_next_worker_continues(
    isolated_settings: Settings,
) -> None:
    settings = isolated_settings
    project = load_project_text(CHAIN, "w.yaml").spec
    slow = ScriptedModel(latency=0.6)
    first = Engine(settings)
    await first.start(serve_workers=2)
    with override_models(slow.model):
        run = await first.submit(project, "w", {})
        async with asyncio.timeout(20):
            while "one" not in slow.calls:
                await asyncio.sleep(0.02)
        await first.stop(grace=5)
    steps = {s.key: s for s in await _steps(settings, run.id)}
    assert steps["one"].status is StepStatus.SUCCEEDED  # finished within the grace period
    assert "two" not in steps  # no new call started while draining

    second = Engine(settings)
    await second.start(serve_workers=2)
    try:
        with override_models(slow.model):
            await _wait_status(second, run.id, RunStatus.SUCCEEDED)
    finally:
        await second.stop()
    assert slow.calls == ["one", "two", "three"]  # nothing ran twice


async def test_recovery_adopts_a_run_whose_worker_stopped_heartbeating(worker: Engine) -> None:
    project = load_project_text(CHAIN, "w.yaml").spec
    model = ScriptedModel()
    try:
        with override_models(model.model):
            run = await worker.submit(project, "w", {})
            await asyncio.wait_for(worker.wait(run.id), 20)
            # Make it look like a worker on another machine died mid-run.
            await worker.store.update_run(
                run.id,
                status="running",
                owner="elsewhere-1-dead",
                owner_host="elsewhere",
                owner_pid=1,
                heartbeat_at=time.time() - 60,
                outputs=None,
            )
            await worker.store.update_run(run.id, workflow_id=run.id)
            await sweep(worker)  # the background sweep may be first; either adopts it once
            await _wait_status(worker, run.id, RunStatus.SUCCEEDED)
            assert await sweep(worker) == []
    finally:
        await worker.stop()
    assert model.calls == ["one", "two", "three"]  # checkpoints reused on adoption


async def test_recovery_leaves_live_owners_alone(worker: Engine) -> None:
    project = load_project_text(CHAIN, "w.yaml").spec
    try:
        with override_models(ScriptedModel().model):
            run = await worker.submit(project, "w", {})
            await asyncio.wait_for(worker.wait(run.id), 20)
            await worker.store.update_run(
                run.id, status="running", owner="elsewhere-2-live", heartbeat_at=time.time()
            )
            assert await sweep(worker) == []
    finally:
        await worker.stop()


async def _steps(settings: Settings, run_id: str) -> list[StepRecord]:
    store = await Store.open(settings.resolved_database_url)
    try:
        return await store.steps(run_id)
    finally:
        await store.close()


async def test_a_run_recorded_but_never_queued_is_queued_by_recovery(worker: Engine) -> None:
    from agentmill.engine.engine import _new_run
    from agentmill.engine.plan import build_plan

    project = load_project_text(CHAIN, "w.yaml").spec
    model = ScriptedModel()
    # As if the process died between recording the run and queueing it.
    lost = dataclasses.replace(
        _new_run(build_plan(project, "w"), {}, config_path=None, tenant="default", owner=None),
        created_at=time.time() - 120,
        served=True,
    )
    try:
        with override_models(model.model):
            await worker.store.create_run(lost)
            await sweep(worker)  # or the background sweep
            await _wait_status(worker, lost.id, RunStatus.SUCCEEDED)
    finally:
        await worker.stop()
    assert model.calls == ["one", "two", "three"]


ONE = """
version: 1
agents:
  a: {model: openai:gpt-4o}
workflows:
  w:
    steps:
      - {id: one, agent: a, prompt: "one"}
"""


async def _queued_pair(engine: Engine) -> tuple[str, str]:
    """Two runs sharing a concurrency key in queue mode: the second waits for the first."""
    project = load_project_text(ONE, "w.yaml").spec
    first = await engine.submit(project, "w", {}, concurrency_key="k", concurrency_mode="queue")
    second = await engine.submit(project, "w", {}, concurrency_key="k", concurrency_mode="queue")
    async with asyncio.timeout(20):
        while not any(e.kind == "run_queued" for e in await engine.store.events(second.id)):
            await asyncio.sleep(0.05)
    return first.id, second.id


async def test_cancelling_a_run_waiting_for_its_turn_cancels_it(worker: Engine) -> None:
    try:
        with override_models(ScriptedModel(latency=1.0).model):
            first, second = await _queued_pair(worker)
            await worker.cancel(second)
            await _wait_status(worker, second, RunStatus.CANCELLED)
            await _wait_status(worker, first, RunStatus.SUCCEEDED)
    finally:
        await worker.stop()


async def test_a_run_waiting_for_its_turn_at_shutdown_is_continued_by_the_next_worker(
    isolated_settings: Settings,
) -> None:
    first_worker = Engine(isolated_settings)
    await first_worker.start(serve_workers=4)
    model = ScriptedModel(latency=1.0)
    with override_models(model.model):
        first, second = await _queued_pair(first_worker)
        await first_worker.stop()
        run = await _run_of(isolated_settings, second)
        assert (run.status, run.auto_resume) == (RunStatus.INTERRUPTED, True)
        next_worker = Engine(isolated_settings)
        await next_worker.start(serve_workers=4)
        try:
            await _wait_status(next_worker, first, RunStatus.SUCCEEDED)
            await _wait_status(next_worker, second, RunStatus.SUCCEEDED)
        finally:
            await next_worker.stop()


async def _run_of(settings: Settings, run_id: str) -> RunRecord:
    store = await Store.open(settings.resolved_database_url)
    try:
        return await store.get_run(run_id)
    finally:
        await store.close()


async def test_a_run_resumed_while_its_cancelled_execution_still_ends_stays_in_hand(
    worker: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resume is accepted as soon as the cancel is recorded, while the cancelled
    execution in this process is still ending (releasing holds, DBOS recording it). The
    new execution must not be forgotten when the old one ends: it is heartbeated and can
    be cancelled (it once ran on unwatched, and was adopted a second time)."""
    from agentmill.engine import execution

    ending, finish = asyncio.Event(), asyncio.Event()
    release = execution.release_run_holds

    async def held_release(*args: Any, **kwargs: Any) -> None:
        if not ending.is_set():  # the cancelled execution: hold it after its end is recorded
            ending.set()
            await finish.wait()
        await release(*args, **kwargs)

    monkeypatch.setattr(execution, "release_run_holds", held_release)
    executor = worker._executor  # pyright: ignore[reportPrivateUsage]
    assert executor is not None
    resumed, execute = asyncio.Event(), executor.execute

    async def noting_execute(run_id: str) -> dict[str, Any]:
        if ending.is_set():
            resumed.set()
        return await execute(run_id)

    monkeypatch.setattr(executor, "execute", noting_execute)
    model = ScriptedModel(latency=0.3)
    project = load_project_text(CHAIN, "w.yaml").spec
    try:
        with override_models(model.model):
            run = await worker.submit(project, "w", {})
            async with asyncio.timeout(20):
                while not model.calls:
                    await asyncio.sleep(0.02)
            cancelled = executor.active[run.id]
            await worker.cancel(run.id)
            await ending.wait()
            assert (await worker.store.get_run(run.id)).status is RunStatus.CANCELLED
            await worker.resume(run.id)
            await asyncio.wait_for(resumed.wait(), 20)  # dequeued here, old one still ending
            finish.set()
            await asyncio.wait({cancelled})
            assert worker.executes(run.id), "the resumed execution was forgotten"
            await worker.cancel(run.id)
            final = await asyncio.wait_for(worker.wait(run.id), 20)
    finally:
        await worker.stop()
    assert final.status is RunStatus.CANCELLED
