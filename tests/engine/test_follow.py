"""Following a run ends when the run has ended for good, not at its first terminal event."""

from __future__ import annotations

import asyncio

from agentmill.agents.models import override_models
from agentmill.engine.engine import Engine
from agentmill.settings import Settings
from agentmill.spec.loader import load_project_text
from agentmill.store import EventRecord, RunStatus
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
"""


def _run_events(events: list[EventRecord]) -> list[str]:
    return [e.kind for e in events if e.kind.startswith("run_")]


async def test_follow_goes_past_an_interruption_the_run_was_resumed_from(
    settings: Settings,
) -> None:
    project = load_project_text(CHAIN, "w.yaml").spec
    model = ScriptedModel(latency=0.2)
    first = Engine(settings)
    await first.start()
    with override_models(model.model):
        run = await first.submit(project, "w", {})
        async with asyncio.timeout(20):
            while not model.calls:
                await asyncio.sleep(0.02)
        await first.stop()  # Ctrl-C: interrupted, resumable
    second = Engine(settings)
    await second.start()
    try:
        # Interrupted and nobody continuing it: following ends at its interruption.
        interrupted = [e async for e in second.follow(run.id)]
        assert _run_events(interrupted) == ["run_started", "run_interrupted"]
        with override_models(model.model):
            await second.resume(run.id)
            await asyncio.wait_for(second.wait(run.id), 20)
        followed = [e async for e in second.follow(run.id)]
        assert followed == await second.store.events(run.id)
    finally:
        await second.stop()
    assert _run_events(followed) == [
        "run_started",
        "run_interrupted",
        "run_resumed",
        "run_finished",
    ]
    assert followed[-1].data["status"] == "succeeded"


async def test_follow_goes_past_a_failure_the_run_was_resumed_from(engine: Engine) -> None:
    project = load_project_text(CHAIN, "w.yaml").spec
    failing = ScriptedModel(
        fail=lambda prompt, call: ValueError("boom") if prompt == "two" else None
    )
    with override_models(failing.model):
        run = await engine.submit(project, "w", {})
        assert (await asyncio.wait_for(engine.wait(run.id), 20)).status is RunStatus.FAILED
    with override_models(ScriptedModel().model):
        await engine.resume(run.id)
        assert (await asyncio.wait_for(engine.wait(run.id), 20)).status is RunStatus.SUCCEEDED
    followed = [e async for e in engine.follow(run.id)]
    assert _run_events(followed) == ["run_started", "run_finished", "run_resumed", "run_finished"]
    assert followed == await engine.store.events(run.id)
