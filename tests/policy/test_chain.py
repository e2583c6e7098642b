"""The policies together, in their order: a cache hit reaches no provider and spends no
budget; a fallback's answer is charged to the budget but not cached under the primary."""

from __future__ import annotations

from collections.abc import AsyncIterator

from pydantic import SecretStr
from pydantic_ai.exceptions import ModelHTTPError
from pydantic_ai.messages import ModelMessage
from pydantic_ai.models.function import AgentInfo, FunctionModel

from agentmill.agents.models import override_models
from agentmill.engine.engine import Engine
from agentmill.settings import Settings
from agentmill.store import RunStatus
from agentmill.store.budgets import BudgetStore
from tests.engine.helpers import run_yaml
from tests.fakes import prompt_of

PROJECT = """
version: 1
agents:
  a:
    model: openai:gpt-4o
    fallback: [openai:gpt-4o-mini]
    max_tokens: 100
    cache: {ttl: 1h}
workflows:
  w:
    budget: {usd: 5}
    steps:
      - {id: s, agent: a, prompt: "same question", backoff: 10ms}
budgets:
  tenants:
    default: {day: {usd: 50}}
"""


async def _tenant_spend(engine: Engine) -> float:
    entries = await BudgetStore(engine.store.sync_engine).entries(
        tenant="default", prefix="tenant:default/day:"
    )
    return sum(entry.spent_usd for entry in entries)


async def test_cache_hits_spend_nothing_and_fallback_answers_are_not_cached(
    isolated_settings: Settings,
) -> None:
    settings = isolated_settings.model_copy(update={"cache_secret": SecretStr("s" * 32)})
    calls: list[str] = []
    primary_down = True

    def model_for(label: str) -> FunctionModel:
        async def recording(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
            calls.append(label)
            if primary_down and label == "openai:gpt-4o":
                raise ModelHTTPError(status_code=500, model_name=label, body=prompt_of(messages))
            yield f"answer to {prompt_of(messages)}"

        return FunctionModel(stream_function=recording, model_name=label)

    engine = Engine(settings)
    await engine.start()
    try:
        with override_models(model_for):
            first, _ = await run_yaml(engine, PROJECT)
            (step,) = await engine.store.steps(first.id)
            assert first.status is RunStatus.SUCCEEDED
            assert step.model == "openai:gpt-4o-mini"
            assert [t["model"] for t in (step.details or {})["fallback"]] == ["openai:gpt-4o"]
            assert step.cost_usd is not None
            assert step.cost_usd > 0
            assert "budget" in (step.details or {})
            after_first = await _tenant_spend(engine)
            assert abs(after_first - step.cost_usd) < 1e-9

            primary_down = False
            second, _ = await run_yaml(engine, PROJECT)  # the fallback's answer was not cached
            assert calls == ["openai:gpt-4o", "openai:gpt-4o-mini", "openai:gpt-4o"]
            after_second = await _tenant_spend(engine)
            assert after_second > after_first

            third, events = await run_yaml(engine, PROJECT)  # the primary's answer was
            assert len(calls) == 3
    finally:
        await engine.stop()
    assert (second.status, third.status) == (RunStatus.SUCCEEDED, RunStatus.SUCCEEDED)
    finished = next(e for e in events if e.kind == "step_finished")
    assert finished.data["cost_usd"] == 0.0
    assert finished.data["details"]["cached"] is True
    assert "budget" not in finished.data["details"]  # no reservation was made
    assert [e.data["text"] for e in events if e.kind == "step_output"]  # replayed as a stream
    assert third.outputs == second.outputs
