"""Another agent as a tool: the child's requests and calls recorded under the parent's call,
its usage and cost on that call and in the step's totals, a retry in the middle of a
delegation replaying the child, and the child's budget refusals stopping the step."""

from __future__ import annotations

from pathlib import Path

from pydantic_ai.exceptions import ModelHTTPError
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo
from pydantic_ai.usage import RequestUsage

from agentmill.agents.base import Usage
from agentmill.agents.pricing import cost_usd
from agentmill.engine.engine import Engine
from agentmill.store import CallStatus, RunStatus
from agentmill.store.budgets import BudgetStore, HoldStatus
from agentmill.store.costs import run_cost
from tests.tools.loop_project import Scripted, executed, run_project, tool_returns, turns

PARENT = "openai:gpt-4o"
CHILD = "openai:gpt-4o-mini"

CONFIG = f"""
version: 1
models: {{default: {PARENT}, small: {CHILD}}}
agents:
  worker:
    instructions: Delegate the sums.
    max_tokens: 200
    tools:
      - agent: helper
        description: Ask the helper to add numbers.
    retries: 1
  helper:
    model: small
    instructions: Add with the tool.
    max_tokens: 200
    tools:
      - function: {{module}}:add
workflows:
  w:
{{workflow}}
    steps:
      - {{id: work, agent: worker, prompt: "what is 1 + 2?", backoff: 0.01}}
"""

PARENT_USAGE = RequestUsage(input_tokens=1000, output_tokens=100)
CHILD_USAGE = RequestUsage(input_tokens=400, output_tokens=40)


def config(workflow: str = "") -> str:
    return CONFIG.replace("{workflow}", workflow)


def parent() -> Scripted:
    """Hands the sum to the helper once, then says what it answered."""

    def script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if turns(messages) == 0:
            call = ToolCallPart("helper", {"task": "add 1 and 2"})
            return ModelResponse(parts=[TextPart("asking. "), call], usage=PARENT_USAGE)
        return ModelResponse(
            parts=[TextPart(f"helper said {tool_returns(messages)}")], usage=PARENT_USAGE
        )

    return Scripted(script)


def child(*, fail_second: int = 0) -> Scripted:
    """Adds with the tool, then answers; its second request fails `fail_second` times."""
    failures: list[int] = []

    def script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if turns(messages) == 0:
            return ModelResponse(parts=[ToolCallPart("add", {"a": 1, "b": 2})], usage=CHILD_USAGE)
        if len(failures) < fail_second:
            failures.append(1)
            raise ModelHTTPError(status_code=503, model_name="gpt-4o-mini", body="overloaded")
        return ModelResponse(
            parts=[TextPart(f"it is {tool_returns(messages)[0]}")], usage=CHILD_USAGE
        )

    return Scripted(script)


def cost(usage: RequestUsage, model: str) -> float:
    found = cost_usd(
        model, Usage(input_tokens=usage.input_tokens, output_tokens=usage.output_tokens)
    )
    assert found is not None
    return found


async def test_the_childs_calls_are_recorded_under_the_parents_call_with_their_cost(
    engine: Engine, tmp_path: Path
) -> None:
    boss, helper = parent(), child()

    done = await run_project(engine, tmp_path, config(), {PARENT: boss, CHILD: helper})

    assert done.run.status is RunStatus.SUCCEEDED, done.run.error
    assert done.run.outputs == {"work": "helper said ['it is 3']"}
    by_step = [(c.step, c.call_id, c.kind) for c in done.calls]
    assert by_step == [
        ("work", "m1", "model"),
        ("work", "t1.1", "tool"),
        ("work>t1.1", "m1", "model"),
        ("work>t1.1", "t1.1", "tool"),
        ("work>t1.1", "m2", "model"),
        ("work", "m2", "model"),
    ]
    (entry,) = executed(tmp_path)
    assert entry["key"] == f"{done.run.id}/work>t1.1/t1.1"
    child_cost = 2 * cost(CHILD_USAGE, CHILD)
    delegation = next(c for c in done.calls if (c.step, c.call_id) == ("work", "t1.1"))
    assert delegation.usage is not None
    assert (delegation.usage["input_tokens"], delegation.usage["requests"]) == (800, 2)
    assert delegation.cost_usd is not None
    assert abs(delegation.cost_usd - child_cost) < 1e-12
    step = done.steps["work"]
    assert step.usage is not None
    assert (step.usage["input_tokens"], step.usage["output_tokens"]) == (2800, 280)
    assert step.usage["requests"] == 4
    total = 2 * cost(PARENT_USAGE, PARENT) + child_cost
    assert step.cost_usd is not None
    assert abs(step.cost_usd - total) < 1e-12
    assert abs(run_cost(done.run, done.steps.values()).usd - total) < 1e-12


async def test_a_transient_error_in_the_child_retries_the_step_replaying_the_child(
    engine: Engine, tmp_path: Path
) -> None:
    boss, helper = parent(), child(fail_second=1)

    done = await run_project(engine, tmp_path, config(), {PARENT: boss, CHILD: helper})

    assert done.run.status is RunStatus.SUCCEEDED, done.run.error
    assert done.run.outputs == {"work": "helper said ['it is 3']"}
    assert done.steps["work"].attempt == 2
    assert boss.calls == 2  # the parent's first request was replayed
    assert helper.calls == 3  # the child's first request was replayed, its second retried
    assert len(executed(tmp_path)) == 1  # the child's tool call was not repeated
    child_calls = [(c.call_id, c.attempt) for c in done.calls if c.step == "work>t1.1"]
    assert child_calls == [("m1", 1), ("t1.1", 1), ("m2", 2)]
    assert {c.status for c in done.calls} == {CallStatus.SUCCEEDED}
    step = done.steps["work"]
    assert step.usage is not None
    assert step.usage["requests"] == 4


async def test_a_budget_refusal_in_the_child_stops_the_step(engine: Engine, tmp_path: Path) -> None:
    boss, helper = parent(), child()
    # The child's first request fits its budget; its second does not.
    text = config().replace("    model: small\n", "    model: small\n    budget: {tokens: 600}\n")

    done = await run_project(engine, tmp_path, text, {PARENT: boss, CHILD: helper})

    assert done.run.status is RunStatus.FAILED
    step = done.steps["work"]
    assert step.error is not None
    assert "budget exceeded: agent 'helper' per-run budget allows 600 tokens" in step.error
    assert step.attempt == 1
    assert (boss.calls, helper.calls) == (1, 1)
    assert len(executed(tmp_path)) == 1
    holds = await BudgetStore(engine.store.sync_engine).holds(done.run.id)
    assert [h.call_key for h in holds] == ["work>t1.1#m1"]
    assert {h.status for h in holds} == {HoldStatus.SETTLED}


async def test_a_budget_refusal_in_one_of_two_parallel_delegations_stops_the_step(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    def script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if turns(messages) == 0:
            calls = [
                ToolCallPart("helper", {"task": f"add {n}"}, tool_call_id=f"c{n}") for n in (1, 2)
            ]
            return ModelResponse(parts=calls, usage=PARENT_USAGE)
        return ModelResponse(parts=[TextPart("unexpected")], usage=PARENT_USAGE)

    boss, helper = Scripted(script), child()
    text = config().replace("    model: small\n", "    model: small\n    budget: {tokens: 600}\n")

    done = await run_project(sqlite_engine, tmp_path, text, {PARENT: boss, CHILD: helper})

    assert done.run.status is RunStatus.FAILED
    step = done.steps["work"]
    assert step.error is not None
    assert "budget exceeded: agent 'helper' per-run budget" in step.error
    assert step.attempt == 1
    assert boss.calls == 1
