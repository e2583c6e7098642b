"""Cost per step, per run, per workflow and per tenant; unknown prices never count as zero."""

from __future__ import annotations

from genai_prices import Usage as PriceUsage
from genai_prices import calc_price

from agentmill.agents.models import override_models
from agentmill.engine.engine import Engine
from agentmill.store import RunStatus, StepRecord, cost_totals, run_cost
from tests.engine.helpers import run_yaml
from tests.fakes import ScriptedModel

PROJECT = """
version: 1
models:
  custom: {provider: openai, base_url: "http://127.0.0.1:9/v1", name: house-model}
  priced:
    provider: openai
    base_url: "http://127.0.0.1:9/v1"
    name: house-model
    price: {input: 1.0, output: 2.0}
agents:
  known: {model: "openai:gpt-4o-mini"}
  unknown: {model: custom}
  priced: {model: priced}
  local: {model: "local:smollm2"}
workflows:
  w:
    steps:
      - {id: a, agent: known, prompt: alpha}
      - {id: b, agent: unknown, prompt: beta}
      - {id: c, agent: priced, prompt: gamma}
      - {id: d, agent: local, prompt: delta, needs: [a, b, c]}
"""


def _tokens(step: StepRecord) -> tuple[int, int]:
    usage = step.usage or {}
    return usage["input_tokens"], usage["output_tokens"]


async def test_each_step_records_its_cost_and_unknown_prices_stay_unknown(engine: Engine) -> None:
    with override_models(ScriptedModel().model):
        run, events = await run_yaml(engine, PROJECT)
    assert run.status is RunStatus.SUCCEEDED
    steps = {step.key: step for step in await engine.store.steps(run.id)}

    tokens_in, tokens_out = _tokens(steps["a"])
    expected = calc_price(
        PriceUsage(input_tokens=tokens_in, output_tokens=tokens_out),
        model_ref="gpt-4o-mini",
        provider_id="openai",
    ).total_price
    assert steps["a"].cost_usd is not None
    assert tokens_in > 0
    assert abs(steps["a"].cost_usd - float(expected)) < 1e-12
    assert steps["b"].cost_usd is None
    tokens_in, tokens_out = _tokens(steps["c"])
    assert steps["c"].cost_usd == (tokens_in * 1.0 + tokens_out * 2.0) / 1e6
    assert steps["d"].cost_usd == 0.0

    finished = {e.step: e.data for e in events if e.kind == "step_finished"}
    assert finished["a"]["cost_usd"] == steps["a"].cost_usd
    assert finished["b"]["cost_usd"] is None

    summary = run_cost(run, list(steps.values()))
    assert (summary.calls, summary.unpriced_calls, summary.complete) == (4, 1, False)
    assert summary.usd == (steps["a"].cost_usd or 0) + (steps["c"].cost_usd or 0)
    assert summary.describe() == f"${summary.usd:.4f} + 1 call of unknown price"


async def test_totals_per_workflow_and_tenant_do_not_count_reused_steps_twice(
    isolated_engine: Engine,
) -> None:
    engine = isolated_engine  # totals must see only this test's runs
    with override_models(ScriptedModel().model):
        first, _ = await run_yaml(engine, PROJECT)
        retry = await engine.retry(first.id, "d")
        async for _ in engine.follow(retry.id):
            pass
    retry = await engine.store.get_run(retry.id)
    assert retry.status is RunStatus.SUCCEEDED
    first_cost = run_cost(first, await engine.store.steps(first.id))
    retry_cost = run_cost(retry, await engine.store.steps(retry.id))
    assert (retry_cost.calls, retry_cost.usd) == (1, 0.0)  # only d ran again, at no cost

    (by_workflow,) = await cost_totals(engine.store.engine, group_by="workflow", tenant="default")
    assert by_workflow.group == "w"
    assert by_workflow.calls == first_cost.calls + 1
    assert by_workflow.unpriced_calls == 1
    assert abs(by_workflow.usd - first_cost.usd) < 1e-12

    (by_tenant,) = await cost_totals(engine.store.engine, group_by="tenant", tenant=None)
    assert (by_tenant.group, by_tenant.calls) == ("default", first_cost.calls + 1)
    assert await cost_totals(engine.store.engine, group_by="tenant", tenant="other") == []
    later = await cost_totals(
        engine.store.engine, group_by="workflow", tenant="default", since=retry.created_at
    )
    assert [total.calls for total in later] == [1]
