"""A provider that reports no token usage: the call's usage is an estimate, flagged as such,
and budgets count the estimate, never zero (a real OpenAI-compatible HTTP server that
streams without a usage chunk, and a FunctionModel whose answer omits usage)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydantic_ai.messages import ModelMessage, ModelResponse, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.usage import RequestUsage
from rich.console import Console

from agentmill.agents.base import Usage
from agentmill.agents.models import override_models
from agentmill.cli.live import ProgressView
from agentmill.cli.report import closing_line, token_count
from agentmill.cli.runs_cmd import _cost_column  # pyright: ignore[reportPrivateUsage]
from agentmill.engine.engine import Engine
from agentmill.store import EventRecord, RunStatus, run_cost
from agentmill.store.budgets import BudgetStore
from agentmill.store.costs import cost_totals
from tests.engine.helpers import run_yaml
from tests.policy.test_provider_http import FakeOpenAI, Reply, of

TEXT = "one two three four five six seven eight"


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI()
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def engine(sqlite_engine: Engine) -> Engine:
    return sqlite_engine


def _config(url: str, agent: str = "") -> str:
    return f"""
version: 1
models:
  m: {{provider: openai, name: m, base_url: "{url}", price: {{input: 1.0, output: 2.0}}}}
agents:
  a: {{model: m, instructions: be brief, max_tokens: 100{agent}}}
workflows:
  w:
    budget: {{tokens: 100000, usd: 5}}
    steps:
      - {{id: s, agent: a, prompt: "say eight words"}}
"""


async def test_a_stream_without_usage_is_an_estimate_that_the_budget_counts(
    isolated_engine: Engine, server: FakeOpenAI
) -> None:
    engine = isolated_engine  # cost totals are over the whole database
    server.scripts["/v1"] = [Reply(text=TEXT, usage=False)]
    run, events = await run_yaml(engine, _config(server.url("/v1")))

    assert run.status is RunStatus.SUCCEEDED, run.error
    (step,) = await engine.store.steps(run.id)
    assert step.output == TEXT
    usage = step.usage or {}
    assert usage.get("estimated") is True
    # Eight streamed chunks: at least one token each; the prompt and instructions went in.
    assert usage["output_tokens"] >= 8
    assert usage["input_tokens"] > 0
    (finished,) = of(events, "step_finished")
    assert finished.data["usage"] == usage
    # Priced from the estimate, never free.
    expected = (usage["input_tokens"] * 1.0 + usage["output_tokens"] * 2.0) / 1e6
    assert step.cost_usd == pytest.approx(expected)
    entry = await BudgetStore(engine.store.sync_engine).entry(f"run:{run.id}")
    assert entry is not None
    assert entry.spent_tokens == usage["input_tokens"] + usage["output_tokens"]
    assert entry.spent_usd == pytest.approx(expected)
    assert (run.usage or {}).get("estimated") is True

    # Shown as estimates: `runs show`, the closing line, `costs`.
    assert token_count(usage, "output_tokens") == f"~{usage['output_tokens']}"
    closing = closing_line(run, run_cost(run, [step]))
    assert f", estimated as the provider reported none, ~${expected:.4f})" in closing
    assert _cost_column(step) == f"~${expected:.4f}"
    assert run_cost(run, [step]).describe() == f"~${expected:.4f}"
    (total,) = await cost_totals(engine.store.engine, group_by="workflow", tenant=None)
    assert (total.calls, total.estimated_calls, total.unpriced_calls) == (1, 1, 0)
    assert total.describe() == f"~${expected:.4f}"


async def test_a_stream_with_usage_is_not_flagged(engine: Engine, server: FakeOpenAI) -> None:
    server.scripts["/v1"] = [Reply(text=TEXT)]
    run, _ = await run_yaml(engine, _config(server.url("/v1")))
    assert run.status is RunStatus.SUCCEEDED, run.error
    (step,) = await engine.store.steps(run.id)
    assert step.usage == {
        "input_tokens": 7,
        "output_tokens": 4,
        "cache_read_tokens": 0,
        "requests": 1,
    }


async def test_structured_output_without_usage_from_a_function_model_is_estimated(
    engine: Engine,
) -> None:
    def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        tool = info.output_tools[0].name
        call = ToolCallPart(tool_name=tool, args={"verdict": "fine by me"})
        return ModelResponse(parts=[call], usage=RequestUsage(unmeasured_requests=1))

    schema = ", output: {type: object, properties: {verdict: {type: string}}}"
    with override_models(lambda label: FunctionModel(answer, model_name="m")):
        run, _ = await run_yaml(engine, _config("http://127.0.0.1:9/v1", schema))

    assert run.status is RunStatus.SUCCEEDED, run.error
    (step,) = await engine.store.steps(run.id)
    assert step.output == {"verdict": "fine by me"}
    usage = Usage.from_json(step.usage or {})
    assert usage.estimated
    assert usage.input_tokens > 0
    assert usage.output_tokens > 0
    entry = await BudgetStore(engine.store.sync_engine).entry(f"run:{run.id}")
    assert entry is not None
    assert entry.spent_tokens == usage.input_tokens + usage.output_tokens > 0


def test_the_live_view_marks_an_estimate() -> None:
    console = Console(force_terminal=False, record=True, width=100)
    usage = {"input_tokens": 40, "output_tokens": 12, "estimated": True}
    with ProgressView(console, step_ids=["s"]) as view:
        view.handle(_event(1, "step_started"))
        view.handle(_event(2, "step_finished", usage=usage))
    assert "(~12 tokens)" in console.export_text()


def _event(seq: int, kind: str, **data: object) -> EventRecord:
    return EventRecord(run_id="r", seq=seq, kind=kind, step="s", attempt=1, data=data, ts=0.0)
