"""DAG order, concurrency caps, foreach, when, outputs: on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from agentmill.agents.models import override_models
from agentmill.engine.engine import Engine
from agentmill.store import RunStatus
from tests.engine.helpers import kinds, run_yaml, seq_of
from tests.fakes import ScriptedModel

DIAMOND = """
version: 1
agents:
  a: {model: openai:gpt-4o}
workflows:
  w:
    inputs: {topic: {type: string}}
    steps:
      - {id: left, agent: a, prompt: "left {{ inputs.topic }}"}
      - {id: right, agent: a, prompt: "right {{ inputs.topic }}"}
      - id: join
        agent: a
        needs: [left, right]
        prompt: "join {{ steps.left.output }} + {{ steps.right.output }}"
"""


async def test_independent_steps_run_concurrently_and_join_waits(engine: Engine) -> None:
    fake = ScriptedModel(latency=0.2)
    with override_models(fake.model):
        run, events = await run_yaml(engine, DIAMOND, inputs={"topic": "x"})
    assert run.status is RunStatus.SUCCEEDED
    assert fake.max_in_flight == 2
    started_join = seq_of(events, "step_started", "join")
    assert started_join > seq_of(events, "step_finished", "left")
    assert started_join > seq_of(events, "step_finished", "right")
    assert run.outputs == {"join": "echo: join echo: left x + echo: right x"}
    assert fake.calls.count("join echo: left x + echo: right x") == 1


async def test_events_are_numbered_without_gaps_and_text_streams(engine: Engine) -> None:
    fake = ScriptedModel()
    with override_models(fake.model):
        run, events = await run_yaml(engine, DIAMOND, inputs={"topic": "y"})
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert kinds(events, "left") == [
        "step_started",
        "step_output",
        "step_output",
        "step_output",
        "step_finished",
    ]
    await engine.store.journal.commit()
    stored = await engine.store.events(run.id)
    assert [e.seq for e in stored] == [e.seq for e in events]
    assert events[-1].kind == "run_finished"
    assert events[-1].data["status"] == "succeeded"


async def test_workflow_concurrency_cap_limits_calls_in_flight(engine: Engine) -> None:
    text = DIAMOND.replace("    inputs: {topic", "    concurrency: 1\n    inputs: {topic")
    fake = ScriptedModel(latency=0.05)
    with override_models(fake.model):
        run, _ = await run_yaml(engine, text, inputs={"topic": "x"})
    assert run.status is RunStatus.SUCCEEDED
    assert fake.max_in_flight == 1


FOREACH = """
version: 1
agents:
  a: {model: openai:gpt-4o}
workflows:
  w:
    inputs: {files: {type: list}}
    steps:
      - id: each
        agent: a
        foreach: "{{ inputs.files }}"
        concurrency: 2
        prompt: "review {{ item }} ({{ index }})"
      - id: total
        agent: a
        needs: [each]
        prompt: "{{ steps.each.output | length }} reviews"
"""


async def test_foreach_calls_once_per_item_in_order_within_its_cap(engine: Engine) -> None:
    fake = ScriptedModel(latency=0.05)
    files = ["a.py", "b.py", "c.py", "d.py", "e.py"]
    with override_models(fake.model):
        run, events = await run_yaml(engine, FOREACH, inputs={"files": files})
    assert run.status is RunStatus.SUCCEEDED
    assert fake.max_in_flight == 2
    assert sorted(fake.calls[:5]) == sorted(f"review {f} ({i})" for i, f in enumerate(files))
    assert run.outputs == {"total": "echo: 5 reviews"}
    steps = {s.key: s for s in await engine.store.steps(run.id)}
    assert steps["each[3]"].output == "echo: review d.py (3)"
    assert {e.step for e in events if e.kind == "step_finished"} >= {f"each[{i}]" for i in range(5)}


async def test_foreach_over_empty_list_produces_empty_output(engine: Engine) -> None:
    fake = ScriptedModel()
    with override_models(fake.model):
        run, _ = await run_yaml(engine, FOREACH, inputs={"files": []})
    assert run.status is RunStatus.SUCCEEDED
    assert run.outputs == {"total": "echo: 0 reviews"}


WHEN = """
version: 1
agents:
  a: {model: openai:gpt-4o}
workflows:
  w:
    inputs: {deep: {type: boolean, default: false}}
    steps:
      - {id: scan, agent: a, prompt: "scan"}
      - {id: deep, agent: a, needs: [scan], when: "{{ inputs.deep }}", prompt: "deep"}
      - id: report
        agent: a
        needs: [deep]
        prompt: "skipped={{ steps.deep.skipped }}"
"""


@pytest.mark.parametrize(("deep", "expected_calls"), [(False, 2), (True, 3)])
async def test_when_skips_or_runs_a_step(engine: Engine, deep: bool, expected_calls: int) -> None:
    fake = ScriptedModel()
    with override_models(fake.model):
        run, events = await run_yaml(engine, WHEN, inputs={"deep": deep})
    assert run.status is RunStatus.SUCCEEDED
    assert len(fake.calls) == expected_calls
    assert run.outputs == {"report": f"echo: skipped={not deep}"}
    assert ("step_skipped" in kinds(events, "deep")) is (not deep)
