"""Agents with an output schema return JSON values that later templates can read."""

from __future__ import annotations

from pydantic_ai.models.test import TestModel

from agentmill.agents.models import override_models
from agentmill.engine.engine import Engine
from agentmill.store import RunStatus
from tests.engine.helpers import run_yaml
from tests.fakes import ScriptedModel

STRUCTURED = """
version: 1
agents:
  grader:
    model: openai:gpt-4o
    output:
      type: object
      properties:
        score: {type: integer}
        verdict: {type: string}
      required: [score, verdict]
  writer: {model: anthropic:claude-sonnet-4-5}
workflows:
  w:
    steps:
      - {id: grade, agent: grader, prompt: "grade this"}
      - id: explain
        agent: writer
        needs: [grade]
        prompt: "score={{ steps.grade.output.score }} verdict={{ steps.grade.output.verdict }}"
"""


async def test_structured_output_is_a_json_object_usable_downstream(engine: Engine) -> None:
    model = TestModel(custom_output_args={"score": 7, "verdict": "fine"})
    writer = ScriptedModel()
    with override_models(lambda label: model if label == "openai:gpt-4o" else writer.model()):
        run, _ = await run_yaml(engine, STRUCTURED)
    assert run.status is RunStatus.SUCCEEDED, run.error
    steps = {s.key: s for s in await engine.store.steps(run.id)}
    assert steps["grade"].output == {"score": 7, "verdict": "fine"}
    assert steps["explain"].output == "echo: score=7 verdict=fine"
