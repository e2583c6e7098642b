"""The snapshot of a workflow stored with each run.

A run interprets its own copy of the workflow and the agents it uses, so editing the
config file never changes or breaks a run already in flight.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter

from agentmill.spec.models import AgentSpec, ModelEndpoint, ProjectSpec, WorkflowSpec

__all__ = ["RunPlan", "build_plan", "downstream_of"]

_MODEL_REF: TypeAdapter[str | ModelEndpoint] = TypeAdapter(str | ModelEndpoint)


@dataclass(frozen=True, kw_only=True)
class RunPlan:
    """A workflow with the agents and resolved model references it needs."""

    workflow_name: str
    workflow: WorkflowSpec
    agents: dict[str, AgentSpec]
    models: dict[str, str | ModelEndpoint]
    """Resolved model reference per agent name."""

    def to_json(self) -> dict[str, Any]:
        return {
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
        )


def build_plan(project: ProjectSpec, workflow_name: str) -> RunPlan:
    """The plan for one workflow of a validated project."""
    workflow = project.workflows[workflow_name]
    names = sorted({step.agent for step in workflow.steps if step.agent is not None})
    agents = {name: project.agents[name] for name in names}
    models = {name: project.model_for(agent) for name, agent in agents.items()}
    return RunPlan(workflow_name=workflow_name, workflow=workflow, agents=agents, models=models)


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
