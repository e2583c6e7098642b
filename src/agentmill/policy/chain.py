"""Composing the policies around one agent of one run.

Outermost first: guard (injection screen, size limits) -> response cache -> fallback over
the agent's models, each behind its provider's circuit breaker -> budget reservation ->
shared rate limit -> the model. A cache hit therefore costs nothing and takes no rate
token; a refused budget never waits for a rate token; the breaker sees every failure of
its provider.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agentmill.agents.llm import LLMAgent
from agentmill.agents.models import model_label, resolve_model
from agentmill.policy.breaker import Breakers, behind_breaker
from agentmill.policy.budget import budgeted
from agentmill.policy.cache import cached
from agentmill.policy.fallback import with_fallbacks
from agentmill.policy.guard import guarded
from agentmill.policy.ratelimit import rate_limited
from agentmill.spec.models import ModelEndpoint

if TYPE_CHECKING:
    from agentmill.agents.base import Agent
    from agentmill.agents.tools.recorded import ToolApprovals
    from agentmill.engine.plan import RunPlan
    from agentmill.settings import Settings
    from agentmill.store import Store

__all__ = ["PolicyServices", "RunScope", "build_call_agent", "is_untrusted_trigger"]


def is_untrusted_trigger(trigger: dict[str, Any] | None) -> bool:
    """Whether a run's inputs came from outside (a webhook, or a retry of such a run)."""
    trigger = trigger or {}
    return trigger.get("source") == "github" or bool(trigger.get("untrusted"))


@dataclass(frozen=True, kw_only=True)
class RunScope:
    """Who a run belongs to and what it may spend."""

    run_id: str
    tenant: str
    workflow: str
    api_key_id: str | None = None
    budget: dict[str, Any] | None = None
    """The per-run budget given at start, replacing the workflow's."""
    triggered: bool = False
    """Started by a webhook: its inputs are untrusted."""


@dataclass(kw_only=True)
class PolicyServices:
    """What the policies share within one process: the store, settings, breakers, cache."""

    store: Store
    settings: Settings
    breakers: Breakers = field(default_factory=Breakers)
    shared: dict[str, Any] = field(default_factory=dict)
    """Process-wide objects a policy creates once (e.g. the response cache)."""
    tool_approvals: Callable[[RunScope], ToolApprovals] | None = None
    """Where tool calls that need approval wait for a decision (the engine's gates)."""


def build_call_agent(
    name: str, *, plan: RunPlan, scope: RunScope, services: PolicyServices
) -> tuple[Agent, int]:
    """The agent doing calls of `name` in this run, with its policies, and how many
    models it may use (its own plus fallbacks)."""
    spec = plan.agents[name]
    if spec.runtime == "cli":
        cli = _cli_agent(name, plan=plan, services=services)
        return guarded(cli, guard=plan.workflow.guard, bounds_own_output=True), 1
    refs = [plan.models[name], *plan.fallbacks.get(name, [])]
    llms = [_llm(name, ref, plan=plan, scope=scope) for ref in refs]
    models = [_guarded_model(name, llm, plan=plan, scope=scope, services=services) for llm in llms]
    agent = with_fallbacks(models, [llm.label for llm in llms])
    if spec.cache is not None:
        agent = cached(
            agent,
            services=services,
            tenant=scope.tenant,
            spec=spec.cache,
            identity=llms[0].identity(),
        )
    agent = guarded(agent, guard=plan.workflow.guard)
    if spec.tools:
        from agentmill.policy.tools import tool_loop

        agent = tool_loop(name, agent, llms[0], plan=plan, scope=scope, services=services)
    return agent, len(refs)


def _cli_agent(name: str, *, plan: RunPlan, services: PolicyServices) -> Agent:
    """A command-line agent: no model policies apply (the tool calls its own provider)."""
    from agentmill.agents.cli.agent import CliAgent, PresetSlots, cli_call

    slots = services.shared.setdefault("cli_slots", PresetSlots())
    call = cli_call(
        plan.agents[name], presets=plan.presets, base_dir=plan.base_dir, settings=services.settings
    )
    return CliAgent(call, slots=slots)


def _guarded_model(
    name: str, llm: LLMAgent, *, plan: RunPlan, scope: RunScope, services: PolicyServices
) -> Agent:
    agent: Agent = rate_limited(
        llm, llm=llm, limits=plan.limits, store=services.store, shared=services.shared
    )
    agent = budgeted(agent, llm=llm, plan=plan, scope=scope, agent_name=name, store=services.store)
    return behind_breaker(agent, breakers=services.breakers, label=llm.label, spec=plan.breaker)


def _llm(name: str, ref: str | ModelEndpoint, *, plan: RunPlan, scope: RunScope) -> LLMAgent:
    from agentmill.policy.budget import max_tokens_under_budget

    spec = plan.agents[name]
    return LLMAgent(
        model=resolve_model(ref),
        label=model_label(ref),
        instructions=spec.instructions,
        max_tokens=max_tokens_under_budget(spec, plan=plan, scope=scope),
        temperature=spec.temperature,
        output_schema=spec.output,
        price=ref.price if isinstance(ref, ModelEndpoint) else None,
    )
