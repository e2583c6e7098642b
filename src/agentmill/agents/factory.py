"""Building the agent that does a step's work from its spec."""

from __future__ import annotations

from agentmill.agents.base import Agent
from agentmill.agents.llm import LLMAgent
from agentmill.agents.models import model_label, resolve_model
from agentmill.spec.models import AgentSpec, ModelEndpoint

__all__ = ["build_agent"]


def build_agent(spec: AgentSpec, model: str | ModelEndpoint) -> Agent:
    """The agent for a spec, with its model resolved."""
    return LLMAgent(
        model=resolve_model(model),
        label=model_label(model),
        instructions=spec.instructions,
        max_tokens=spec.max_tokens,
        temperature=spec.temperature,
        output_schema=spec.output,
    )
