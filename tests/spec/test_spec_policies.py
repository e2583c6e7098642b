"""Policy settings in the project file: fallbacks, limits, budgets, cache, guard."""

from __future__ import annotations

from pathlib import Path

from agentmill.engine.plan import RunPlan, build_plan
from agentmill.spec.loader import load_project_text
from agentmill.spec.models import ModelEndpoint
from tests.spec.test_spec_schema_errors import lines_of


def test_unknown_fallbacks_and_limit_providers_are_reported_with_lines(tmp_path: Path) -> None:
    lines = lines_of(
        tmp_path,
        """\
        models: {cheap: openai:gpt-4o-mini}
        agents:
          a: {model: cheap, fallback: [chaep, "nope:x"]}
        workflows:
          w: {steps: [{id: s, agent: a, prompt: hi}]}
        limits:
          opnai: {rpm: 10}
        """,
    )
    assert lines == [
        "3: agent 'a' uses unknown model 'chaep'",
        "3: agent 'a' uses unknown model provider 'nope' in 'nope:x'",
        "7: limits: 'opnai' names no known provider",
    ]


def test_budget_needs_a_limit_and_numbers_must_be_positive(tmp_path: Path) -> None:
    lines = lines_of(
        tmp_path,
        """\
        agents:
          a: {budget: {}}
        workflows:
          w:
            budget: {usd: -1}
            steps: [{id: s, agent: a, prompt: hi}]
        """,
    )
    assert len(lines) == 2
    assert lines[0].startswith("2: ")
    assert "budget needs `usd`, `tokens` or both" in lines[0]
    assert lines[1].startswith("5: ")
    assert "usd" in lines[1]


def test_the_plan_snapshot_keeps_policies_and_resolved_fallbacks() -> None:
    spec = load_project_text(
        """
        models:
          house: {provider: openai, base_url: "http://h/v1", name: m, price: {input: 1, output: 2}}
        agents:
          a: {model: openai:gpt-4o, fallback: [house, "openai:gpt-4o-mini"]}
        workflows:
          w: {steps: [{id: s, agent: a, prompt: hi}]}
        budgets: {tenants: {acme: {day: {usd: 5}}}}
        limits: {openai: {rpm: 60}}
        breaker: {failures: 3, reset: 10s}
        """,
        "agentmill.yaml",
    ).spec
    plan = RunPlan.from_json(build_plan(spec, "w").to_json())
    house, mini = plan.fallbacks["a"]
    assert isinstance(house, ModelEndpoint)
    assert house.price is not None
    assert mini == "openai:gpt-4o-mini"
    assert plan.budgets.tenants["acme"].day is not None
    assert plan.limits["openai"].rpm == 60
    assert (plan.breaker.failures, plan.breaker.reset) == (3, 10)


def test_snapshots_from_before_policies_still_load() -> None:
    spec = load_project_text(
        "workflows:\n  w: {steps: [{id: s, agent: a, prompt: hi}]}\nagents: {a: {}}\n", "x.yaml"
    ).spec
    old = build_plan(spec, "w").to_json()
    for key in ("fallbacks", "budgets", "limits", "breaker"):
        old.pop(key)
    plan = RunPlan.from_json(old)
    assert plan.fallbacks == {}
    assert plan.limits == {}
    assert plan.breaker.failures == 5
