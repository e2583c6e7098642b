"""The snapshot of a workflow stored with each run.

A run interprets its own copy of the workflow and the agents it uses, so editing the
config file never changes or breaks a run already in flight.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import TypeAdapter

from agentmill.spec.models import (
    AgentSpec,
    BreakerSpec,
    BudgetsSpec,
    McpServerSpec,
    ModelEndpoint,
    ProjectSpec,
    RateLimitSpec,
    WorkflowSpec,
)
from agentmill.spec.presets import DEFAULT_PRESET, PresetSpec

__all__ = ["RunPlan", "build_plan", "downstream_of"]

_MODEL_REF: TypeAdapter[str | ModelEndpoint] = TypeAdapter(str | ModelEndpoint)
_LIMITS: TypeAdapter[dict[str, RateLimitSpec]] = TypeAdapter(dict[str, RateLimitSpec])


@dataclass(frozen=True, kw_only=True)
class RunPlan:
    """A workflow with the agents and resolved model references it needs."""

    workflow_name: str
    workflow: WorkflowSpec
    agents: dict[str, AgentSpec]
    models: dict[str, str | ModelEndpoint]
    """Resolved model reference per agent name."""
    fallbacks: dict[str, list[str | ModelEndpoint]] = field(default_factory=dict)
    """Resolved fallback models per agent name (agents without any are absent)."""
    budgets: BudgetsSpec = field(default_factory=BudgetsSpec)
    limits: dict[str, RateLimitSpec] = field(default_factory=dict)
    breaker: BreakerSpec = field(default_factory=BreakerSpec)
    presets: dict[str, PresetSpec] = field(default_factory=dict)
    """The resolved preset of every command-line agent, by preset name."""
    base_dir: str | None = None
    """The config file's directory: relative `repo` and `workdir` paths start there."""
    mcp: dict[str, McpServerSpec] = field(default_factory=dict)
    """The MCP servers the agents' tools use, by name."""

    def to_json(self) -> dict[str, Any]:
        return {
            "fallbacks": {
                name: [_MODEL_REF.dump_python(ref, mode="json") for ref in refs]
                for name, refs in self.fallbacks.items()
            },
            "budgets": self.budgets.model_dump(mode="json", exclude_unset=True),
            "limits": _LIMITS.dump_python(self.limits, mode="json", exclude_unset=True),
            "breaker": self.breaker.model_dump(mode="json", exclude_unset=True),
            "presets": {
                name: preset.model_dump(mode="json", exclude_defaults=True)
                for name, preset in self.presets.items()
            },
            "base_dir": self.base_dir,
            "mcp": {
                name: server.model_dump(mode="json", exclude_unset=True)
                for name, server in self.mcp.items()
            },
            "workflow_name": self.workflow_name,
            "workflow": self.workflow.model_dump(mode="json", exclude_unset=True),
            "agents": {
                name: agent.model_dump(mode="json", exclude_unset=True)
                for name, agent in self.agents.items()
            },
            "models": {
                name: _MODEL_REF.dump_python(ref, mode="json") for name, ref in self.models.items()
            },
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunPlan:
        return cls(
            workflow_name=data["workflow_name"],
            workflow=WorkflowSpec.model_validate(data["workflow"]),
            agents={n: AgentSpec.model_validate(a) for n, a in data["agents"].items()},
            models={n: _MODEL_REF.validate_python(m) for n, m in data["models"].items()},
            fallbacks={
                n: [_MODEL_REF.validate_python(m) for m in refs]
                for n, refs in data.get("fallbacks", {}).items()
            },
            budgets=BudgetsSpec.model_validate(data.get("budgets", {})),
            limits=_LIMITS.validate_python(data.get("limits", {})),
            breaker=BreakerSpec.model_validate(data.get("breaker", {})),
            presets={n: PresetSpec.model_validate(p) for n, p in data.get("presets", {}).items()},
            base_dir=data.get("base_dir"),
            mcp={n: McpServerSpec.model_validate(m) for n, m in data.get("mcp", {}).items()},
        )


def build_plan(project: ProjectSpec, workflow_name: str, *, base_dir: str | None = None) -> RunPlan:
    """The plan for one workflow of a validated project."""
    workflow = project.workflows[workflow_name]
    names = _with_delegates(project, {step.agent for step in workflow.steps if step.agent})
    agents = {name: project.agents[name] for name in sorted(names)}
    servers = {tool.mcp for agent in agents.values() for tool in agent.tools if tool.mcp}
    models = {
        name: project.model_for(agent) for name, agent in agents.items() if agent.runtime == "llm"
    }
    used = {agent.preset or DEFAULT_PRESET for agent in agents.values() if agent.runtime == "cli"}
    presets = {name: resolve_preset(project, name) for name in sorted(used)}
    fallbacks = {
        name: project.fallbacks_for(agent) for name, agent in agents.items() if agent.fallback
    }
    return RunPlan(
        workflow_name=workflow_name,
        workflow=workflow,
        agents=agents,
        models=models,
        fallbacks=fallbacks,
        budgets=project.budgets,
        limits=project.limits,
        breaker=project.breaker,
        presets=presets,
        base_dir=base_dir,
        mcp={name: project.mcp[name] for name in sorted(servers)},
    )


def _with_delegates(project: ProjectSpec, names: set[str]) -> set[str]:
    """`names` and every agent they use as a tool, directly or through others."""
    found = set(names)
    pending = list(names)
    while pending:
        agent = project.agents[pending.pop()]
        for tool in agent.tools:
            if tool.agent is not None and tool.agent not in found:
                found.add(tool.agent)
                pending.append(tool.agent)
    return found


def resolve_preset(project: ProjectSpec, name: str) -> PresetSpec:
    """A built-in preset with the config file's changes, or a preset the file defines."""
    from agentmill.agents.cli.presets import load_presets

    return load_presets(project.presets)[name]


def downstream_of(workflow: WorkflowSpec, step_id: str) -> set[str]:
    """`step_id` and every step that needs it, directly or through others."""
    found = {step_id}
    changed = True
    while changed:
        changed = False
        for step in workflow.steps:
            if step.id not in found and found.intersection(step.needs):
                found.add(step.id)
                changed = True
    return found
