"""Budgets on a real database: every level, the race, settle, retries, unknown prices."""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic_ai.exceptions import ModelHTTPError
from pydantic_ai.messages import ModelMessage
from pydantic_ai.models.function import AgentInfo, FunctionModel

from agentmill.agents.base import Usage
from agentmill.agents.models import override_models
from agentmill.agents.pricing import cost_usd
from agentmill.engine.engine import Engine
from agentmill.errors import BudgetExceeded
from agentmill.policy.budget import DEFAULT_MAX_TOKENS, estimate_input_tokens
from agentmill.spec.loader import load_project_text
from agentmill.spec.models import BudgetSpec
from agentmill.store import RunRecord, RunStatus, StepRecord, StepStatus
from agentmill.store.budgets import BudgetStore, Hold, HoldStatus, Limit
from agentmill.store.keys import KeyStore, Role
from tests.fakes import ScriptedModel, prompt_of

MODEL = "openai:gpt-4o"
INSTRUCTIONS = "be brief"
MAX_TOKENS = 200


@pytest.fixture
def scripted() -> Iterator[ScriptedModel]:
    model = ScriptedModel()
    with override_models(model.model):
        yield model


def worst_tokens(prompt: str, max_tokens: int = MAX_TOKENS) -> int:
    return estimate_input_tokens(INSTRUCTIONS, prompt) + max_tokens


def worst_usd(prompt: str, max_tokens: int = MAX_TOKENS) -> float:
    tokens_in = estimate_input_tokens(INSTRUCTIONS, prompt)
    usd = cost_usd(MODEL, Usage(input_tokens=tokens_in, output_tokens=max_tokens))
    assert usd is not None
    return usd


def config(
    *,
    workflow_budget: str = "",
    agent_budget: str = "",
    tenants: str = "",
    model: str = MODEL,
    steps: str = '      - {id: s1, agent: a, prompt: "one"}',
    extra_agent: str = "",
) -> str:
    budgets = f"budgets: {{tenants: {{{tenants}}}}}\n" if tenants else ""
    agent_extra = f", budget: {agent_budget}" if agent_budget else ""
    wf_budget = f"    budget: {workflow_budget}\n" if workflow_budget else ""
    return (
        "version: 1\n"
        f"models: {{default: {model}}}\n"
        f"{budgets}"
        "agents:\n"
        f"  a: {{instructions: {INSTRUCTIONS}, max_tokens: {MAX_TOKENS}"
        f"{agent_extra}{extra_agent}}}\n"
        "workflows:\n"
        "  w:\n"
        "    inputs: {items: {type: list, default: []}}\n"
        f"{wf_budget}"
        "    steps:\n"
        f"{steps}\n"
    )


async def run(
    engine: Engine, text: str, inputs: dict[str, Any] | None = None, **submit: Any
) -> tuple[RunRecord, list[StepRecord]]:
    spec = load_project_text(text, "test.yaml").spec
    started = await engine.submit(spec, "w", inputs or {}, **submit)
    await asyncio.wait_for(engine.wait(started.id), 60)
    tenant = submit.get("tenant", "default")
    return await engine.store.get_run(started.id, tenant=tenant), await engine.store.steps(
        started.id
    )


def budgets(engine: Engine) -> BudgetStore:
    return BudgetStore(engine.store.sync_engine)


def tokens_of(step: StepRecord) -> int:
    assert step.usage is not None
    return step.usage["input_tokens"] + step.usage["output_tokens"]


async def assert_settled(engine: Engine, run_id: str) -> None:
    holds = await budgets(engine).holds(run_id)
    assert holds, "the run reserved nothing"
    assert [h.id for h in holds if h.status is HoldStatus.HELD] == []


# the race


async def test_50_concurrent_calls_against_a_budget_for_5_admit_at_most_5(
    engine: Engine,
) -> None:
    # The admitted calls answer only once every call was admitted or refused, so no call
    # settles (freeing the unused part of its reservation) while others still reserve.
    gate = asyncio.Event()
    calls: list[str] = []

    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
        calls.append(prompt_of(messages))
        await gate.wait()
        yield "ok"

    items = [f"{i:02d}" for i in range(50)]
    need = worst_usd("item 00")
    limit = 5.5 * need
    text = config(
        workflow_budget=f"{{usd: {limit!r}}}",
        steps='      - {id: each, agent: a, prompt: "item {{ item }}", '
        'foreach: "{{ inputs.items }}", concurrency: 50}',
    )
    spec = load_project_text(text, "test.yaml").spec
    with override_models(lambda label: FunctionModel(stream_function=stream, model_name=label)):
        started = await engine.submit(spec, "w", {"items": items})
        while not gate.is_set():
            failed = [s for s in await engine.store.steps(started.id) if s.status == "failed"]
            if len(failed) + len(calls) >= 50:
                gate.set()
            await asyncio.sleep(0.02)
        await asyncio.wait_for(engine.wait(started.id), 60)
    finished = await engine.store.get_run(started.id)
    steps = await engine.store.steps(started.id)

    assert finished.status is RunStatus.FAILED
    admitted = [s for s in steps if s.status is StepStatus.SUCCEEDED]
    refused = [s for s in steps if s.status is StepStatus.FAILED]
    assert len(admitted) == 5
    assert len(refused) == 45
    assert len(calls) == 5  # a refused call never reaches the model
    for step in refused:
        assert step.error is not None
        assert "budget exceeded: workflow 'w' per-run budget allows $" in step.error
        assert f"this call may cost up to ${need:.4f}" in step.error
    entry = await budgets(engine).entry(f"run:{finished.id}")
    assert entry is not None
    assert entry.reserved_usd == pytest.approx(0, abs=1e-9)
    assert entry.spent_usd <= limit + need  # overspend <= one reservation
    assert entry.spent_usd <= limit
    assert entry.spent_usd == pytest.approx(sum(s.cost_usd or 0 for s in admitted))
    await assert_settled(engine, finished.id)


async def test_50_concurrent_reservations_on_one_scope_admit_exactly_5(engine: Engine) -> None:
    store = budgets(engine)
    scope = f"tenant:race-{uuid.uuid4().hex[:8]}/day:2026-01-01"
    limit = Limit(scope=scope, name="tenant 'race' daily budget", tokens=5 * 1000 + 999)

    async def one(i: int) -> BudgetExceeded | None:
        hold = Hold(
            id=f"race/{scope}/{i}", run_id="race", call_key=f"c[{i}]", tenant="race",
            scopes=(scope,), usd=0.0, tokens=1000,
        )  # fmt: skip
        try:
            await store.reserve(hold, [limit])
        except BudgetExceeded as exc:
            return exc
        return None

    outcomes = await asyncio.gather(*(one(i) for i in range(50)))
    refusals = [exc for exc in outcomes if exc is not None]
    assert len(refusals) == 45
    for exc in refusals:
        assert exc.level == "tenant 'race' daily budget"
        assert exc.unit == "tokens"
        assert exc.spent + exc.reserved + exc.needed > exc.limit
    entry = await store.entry(scope)
    assert entry is not None
    assert (entry.reserved_tokens, entry.spent_tokens) == (5000, 0)


# each level


async def test_workflow_budget_refuses_a_call_that_does_not_fit(
    engine: Engine, scripted: ScriptedModel
) -> None:
    finished, steps = await run(engine, config(workflow_budget="{tokens: 100}"))
    assert finished.status is RunStatus.FAILED
    (step,) = steps
    assert step.error is not None
    need = worst_tokens("one")
    assert (
        "budget exceeded: workflow 'w' per-run budget allows 100 tokens, 0 tokens spent and "
        f"0 tokens reserved by calls in flight; this call may cost up to {need:,} tokens"
    ) in step.error
    assert "Raise the budget or lower the agent's max_tokens" in step.error
    assert step.attempt == 1  # a refusal is never retried
    assert scripted.calls == []


async def test_run_budget_replaces_the_workflow_budget(
    engine: Engine, scripted: ScriptedModel
) -> None:
    tight = config(workflow_budget="{usd: 100}")
    finished, steps = await run(engine, tight, budget=BudgetSpec(tokens=50))
    assert finished.status is RunStatus.FAILED
    assert steps[0].error is not None
    assert f"run {finished.id} budget (given at start) allows 50 tokens" in steps[0].error

    loose, steps = await run(
        engine, config(workflow_budget="{tokens: 10}"), budget=BudgetSpec(tokens=100_000)
    )
    assert loose.status is RunStatus.SUCCEEDED, loose.error
    entry = await budgets(engine).entry(f"run:{loose.id}")
    assert entry is not None
    assert entry.spent_tokens == tokens_of(steps[0])


async def test_agent_budget_counts_that_agents_calls_in_the_run(
    engine: Engine, scripted: ScriptedModel
) -> None:
    need = worst_tokens("one")
    steps_text = (
        '      - {id: s1, agent: a, prompt: "one"}\n'
        '      - {id: s2, agent: a, prompt: "one", needs: [s1]}'
    )
    # Room for one worst case plus what the first call actually used, not for two worst cases.
    text = config(agent_budget=f"{{tokens: {need + need // 2}}}", steps=steps_text)
    scripted.reply = lambda prompt: " ".join(["word"] * 150)
    finished, steps = await run(engine, text)
    by_key = {s.key: s for s in steps}
    assert by_key["s1"].status is StepStatus.SUCCEEDED
    assert by_key["s2"].status is StepStatus.FAILED
    assert by_key["s2"].error is not None
    spent = tokens_of(by_key["s1"])
    assert spent > need // 2
    assert (
        f"agent 'a' per-run budget allows {need + need // 2:,} tokens, {spent:,} tokens spent"
    ) in by_key["s2"].error
    entry = await budgets(engine).entry(f"run:{finished.id}/agent:a")
    assert entry is not None
    assert (entry.spent_tokens, entry.reserved_tokens) == (spent, 0)


async def test_tenant_daily_budget_accumulates_over_runs_until_it_refuses(
    engine: Engine, scripted: ScriptedModel
) -> None:
    tenant = f"t{uuid.uuid4().hex[:8]}"
    need = worst_tokens("one")
    limit = 3 * need
    text = config(tenants=f"{tenant}: {{day: {{tokens: {limit}}}, month: {{usd: 50}}}}")
    scripted.reply = lambda prompt: " ".join(["word"] * 180)
    spent = 0
    for _ in range(10):
        finished, steps = await run(engine, text, tenant=tenant)
        if finished.status is RunStatus.FAILED:
            break
        spent += tokens_of(steps[0])
    else:
        pytest.fail("the daily budget never refused a call")
    assert spent + need > limit >= spent
    assert steps[0].error is not None
    assert (
        f"tenant '{tenant}' daily budget allows {limit:,} tokens, {spent:,} tokens spent"
    ) in steps[0].error
    now = datetime.now(UTC)
    day = await budgets(engine).entry(f"tenant:{tenant}/day:{now:%Y-%m-%d}")
    month = await budgets(engine).entry(f"tenant:{tenant}/month:{now:%Y-%m}")
    assert day is not None
    assert month is not None
    assert (day.spent_tokens, day.reserved_tokens, day.tenant) == (spent, 0, tenant)
    assert month.spent_usd > 0
    assert month.reserved_usd == pytest.approx(0, abs=1e-9)


async def test_tenant_monthly_budget_in_usd(engine: Engine, scripted: ScriptedModel) -> None:
    tenant = f"t{uuid.uuid4().hex[:8]}"
    text = config(tenants=f"{tenant}: {{month: {{usd: 0.0001}}}}")
    finished, steps = await run(engine, text, tenant=tenant)
    assert finished.status is RunStatus.FAILED
    assert steps[0].error is not None
    assert f"tenant '{tenant}' monthly budget allows $0.0001, $0.0000 spent" in steps[0].error
    # Another tenant is not limited by it.
    other, _ = await run(engine, text, tenant=f"o{uuid.uuid4().hex[:8]}")
    assert other.status is RunStatus.SUCCEEDED, other.error


async def test_api_key_daily_and_monthly_budgets(engine: Engine, scripted: ScriptedModel) -> None:
    keys = KeyStore(engine.store.engine)
    key, _ = await keys.create(
        tenant="default",
        role=Role.OPERATOR,
        budget={"day": {"tokens": 100}, "month": {"usd": 10.0}},
    )
    assert (await keys.budget(key.id)) == {"day": {"tokens": 100}, "month": {"usd": 10.0}}
    finished, steps = await run(engine, config(), api_key_id=key.id)
    assert finished.status is RunStatus.FAILED
    assert steps[0].error is not None
    assert f"API key {key.id} daily budget allows 100 tokens" in steps[0].error

    await keys.set_budget(key.id, {"month": {"usd": 10.0}})
    finished, steps = await run(engine, config(), api_key_id=key.id)
    assert finished.status is RunStatus.SUCCEEDED, finished.error
    month = await budgets(engine).entry(f"key:{key.id}/month:{datetime.now(UTC):%Y-%m}")
    assert month is not None
    assert month.spent_usd == pytest.approx(steps[0].cost_usd)
    assert steps[0].details is not None
    assert steps[0].details["budget"]["levels"] == [f"API key {key.id} monthly budget"]

    # A key without a budget limits nothing, and an agent without max_tokens gets a cap.
    free, _ = await keys.create(tenant="default", role=Role.OPERATOR)
    finished, steps = await run(engine, config().replace(f", max_tokens: {MAX_TOKENS}", ""),
                                api_key_id=free.id)  # fmt: skip
    assert finished.status is RunStatus.SUCCEEDED, finished.error
    assert await budgets(engine).holds(finished.id) == []


# settle, retries, prices


async def test_settle_charges_the_actual_usage_and_releases_the_rest(
    engine: Engine, scripted: ScriptedModel
) -> None:
    text = config(workflow_budget="{usd: 5, tokens: 100000}")
    finished, steps = await run(engine, text)
    assert finished.status is RunStatus.SUCCEEDED, finished.error
    (step,) = steps
    assert step.cost_usd is not None
    assert 0 < step.cost_usd < worst_usd("one")
    assert step.details is not None
    assert step.details["budget"] == {
        "levels": ["workflow 'w' per-run budget"],
        "reserved": {"usd": round(worst_usd("one"), 6), "tokens": worst_tokens("one")},
    }
    entry = await budgets(engine).entry(f"run:{finished.id}")
    assert entry is not None
    assert entry.spent_tokens == tokens_of(step) < worst_tokens("one")
    assert entry.spent_usd == pytest.approx(step.cost_usd)
    assert (entry.reserved_tokens, entry.reserved_usd) == (0, pytest.approx(0, abs=1e-12))
    (hold,) = await budgets(engine).holds(finished.id)
    assert hold.status is HoldStatus.SETTLED
    assert hold.id == f"{finished.id}/s1#1@{MODEL}"


async def test_a_transient_failure_then_success_is_charged_once(
    engine: Engine, scripted: ScriptedModel
) -> None:
    def fail(prompt: str, call: int) -> BaseException | None:
        if call == 1:
            return ModelHTTPError(status_code=503, model_name="gpt-4o", body="busy")
        return None

    scripted.fail = fail
    text = config(workflow_budget="{tokens: 100000}", extra_agent=", retries: 2")
    text = text.replace('prompt: "one"}', 'prompt: "one", backoff: 0.01}')
    finished, steps = await run(engine, text)
    assert finished.status is RunStatus.SUCCEEDED, finished.error
    assert len(scripted.calls) == 2
    (step,) = steps
    assert step.attempt == 2
    entry = await budgets(engine).entry(f"run:{finished.id}")
    assert entry is not None
    assert (entry.spent_tokens, entry.reserved_tokens) == (tokens_of(step), 0)
    holds = sorted(await budgets(engine).holds(finished.id), key=lambda h: h.id)
    assert [(h.id.rsplit("#", 1)[1], h.status) for h in holds] == [
        (f"1@{MODEL}", HoldStatus.RELEASED),
        (f"2@{MODEL}", HoldStatus.SETTLED),
    ]


async def test_a_usd_budget_refuses_a_model_without_a_known_price(
    engine: Engine, scripted: ScriptedModel
) -> None:
    unpriced = "{provider: openai, name: my-model, base_url: 'http://127.0.0.1:9/v1'}"
    finished, steps = await run(engine, config(workflow_budget="{usd: 1}", model=unpriced))
    assert finished.status is RunStatus.FAILED
    assert steps[0].error is not None
    assert "the workflow 'w' per-run budget is in US dollars but the price of model " in (
        steps[0].error
    )
    assert "'openai:my-model@http://127.0.0.1:9/v1' is unknown" in steps[0].error
    assert "give the model a price under `models`" in steps[0].error
    assert "set the budget in tokens" in steps[0].error
    assert scripted.calls == []

    # A token budget works without a price; a price makes the dollar budget work.
    by_tokens, _ = await run(engine, config(workflow_budget="{tokens: 5000}", model=unpriced))
    assert by_tokens.status is RunStatus.SUCCEEDED, by_tokens.error
    priced = unpriced.replace("}", ", price: {input: 1.0, output: 2.0}}")
    finished, steps = await run(engine, config(workflow_budget="{usd: 1}", model=priced))
    assert finished.status is RunStatus.SUCCEEDED, finished.error
    usage = steps[0].usage
    assert usage is not None
    expected = (usage["input_tokens"] * 1.0 + usage["output_tokens"] * 2.0) / 1e6
    entry = await budgets(engine).entry(f"run:{finished.id}")
    assert entry is not None
    assert entry.spent_usd == pytest.approx(expected)


async def test_the_local_model_costs_nothing_under_a_usd_budget(
    engine: Engine, scripted: ScriptedModel
) -> None:
    finished, steps = await run(
        engine, config(workflow_budget="{usd: 0.001}", model="local:smollm2")
    )
    assert finished.status is RunStatus.SUCCEEDED, finished.error
    assert steps[0].cost_usd == 0.0
    entry = await budgets(engine).entry(f"run:{finished.id}")
    assert entry is not None
    assert entry.spent_usd == 0.0
    assert entry.spent_tokens == tokens_of(steps[0])


async def test_an_agent_without_max_tokens_reserves_the_default_cap(
    engine: Engine, scripted: ScriptedModel
) -> None:
    text = config(workflow_budget="{tokens: 100000}").replace(f", max_tokens: {MAX_TOKENS}", "")
    finished, steps = await run(engine, text)
    assert finished.status is RunStatus.SUCCEEDED, finished.error
    assert steps[0].details is not None
    reserved = steps[0].details["budget"]["reserved"]["tokens"]
    assert reserved == estimate_input_tokens(INSTRUCTIONS, "one") + DEFAULT_MAX_TOKENS


async def test_a_call_cut_off_by_a_cancel_is_charged_its_worst_case(
    engine: Engine, scripted: ScriptedModel
) -> None:
    """The request was sent: the provider may bill it, so a hard budget counts it."""
    scripted.latency = 5.0
    spec = load_project_text(config(workflow_budget="{tokens: 100000}"), "test.yaml").spec
    started = await engine.submit(spec, "w", {})
    store = budgets(engine)
    for _ in range(200):
        if await store.holds(started.id):
            break
        await asyncio.sleep(0.02)
    (hold,) = await store.holds(started.id)
    assert hold.status is HoldStatus.HELD
    await engine.cancel(started.id)
    await asyncio.wait_for(engine.wait(started.id), 30)
    assert (await engine.store.get_run(started.id)).status is RunStatus.CANCELLED
    (hold,) = await store.holds(started.id)
    assert hold.status is HoldStatus.SETTLED
    entry = await store.entry(f"run:{started.id}")
    assert entry is not None
    assert (entry.spent_tokens, entry.reserved_tokens) == (hold.tokens, 0)


async def test_estimates_are_conservative_for_ascii_and_other_scripts() -> None:
    assert estimate_input_tokens("") == 32
    assert estimate_input_tokens("a" * 300) == 32 + 100
    assert estimate_input_tokens("ab", "c") == 32 + 1 + 1
    assert estimate_input_tokens("日本語") == 32 + 6
    assert estimate_input_tokens("x日") == 32 + math.ceil(1 / 3) + 2
