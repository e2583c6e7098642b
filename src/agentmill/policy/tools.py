"""An LLM agent with tools: the durable loop around its policy-wrapped model.

Every model request of the loop goes through the same chain as a step without tools
(guard, cache, fallback, breaker, budget, rate limit), keyed `<step>#m<n>`; the loop's
calls are recorded in `am_calls` through the store's journal.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentmill.agents.base import Agent, StepContext, StepRequest, StepResult
from agentmill.agents.tools.loop import LoopLimits, ToolLoop, Workspace
from agentmill.agents.tools.toolsets import tool_toolsets
from agentmill.policy.retry import current_note
from agentmill.spec.models import WORKTREE
from agentmill.store.records import CallRecord

if TYPE_CHECKING:
    from pydantic_ai.toolsets import AbstractToolset

    from agentmill.agents.llm import LLMAgent
    from agentmill.engine.plan import RunPlan
    from agentmill.policy.chain import PolicyServices, RunScope
    from agentmill.spec.tools import ToolSpec
    from agentmill.store import Store

__all__ = ["StoreCallLog", "tool_loop"]


class StoreCallLog:
    """The loop's records in the store: read once per attempt, written by the journal."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def recorded(self, run_id: str, step: str) -> list[CallRecord]:
        return await self._store.calls(run_id, step)

    def put(self, record: CallRecord) -> None:
        self._store.journal.put_call(record)

    async def commit(self) -> None:
        await self._store.journal.commit()


def tool_loop(
    name: str,
    model_agent: Agent,
    llm: LLMAgent,
    *,
    plan: RunPlan,
    scope: RunScope,
    services: PolicyServices,
) -> ToolLoop:
    """The agent `name` of this run as a durable loop over its tools."""
    spec = plan.agents[name]
    base_dir = Path(plan.base_dir or ".")

    def delegate(agent_name: str, tool: ToolSpec) -> AbstractToolset[Any]:
        return _delegate(agent_name, tool, plan=plan, scope=scope, services=services)

    toolsets = tool_toolsets(spec.tools, servers=plan.mcp, base_dir=base_dir, delegate=delegate)
    approvals = services.tool_approvals(scope) if services.tool_approvals is not None else None
    return ToolLoop(
        model_agent=_Progressing(model_agent),
        model=llm.model,
        label=llm.label,
        toolsets=toolsets,
        log=StoreCallLog(services.store),
        instructions=spec.instructions,
        output_schema=spec.output,
        limits=_limits(spec.max_turns, spec.max_tool_calls, plan.workflow.guard.max_output_chars),
        approvals=approvals,
        workspace=_workspace(spec.workdir, spec.repo, base_dir, services),
    )


class _Progressing(Agent):
    """The loop's model requests, each one that is answered noted as progress of the
    step's attempt: a retry replays it, so a request failing later gets its own retries
    (`AttemptNote.progressed`)."""

    def __init__(self, inner: Agent) -> None:
        self._inner = inner

    async def run(self, request: StepRequest, context: StepContext) -> StepResult:
        result = await self._inner.run(request, context)
        note = current_note()
        if note is not None:
            note.progressed = True
        return result


def _limits(max_turns: int, max_tool_calls: int, max_output_chars: int | None) -> LoopLimits:
    """The loop's guards: the workflow's `guard.max_output_chars` bounds each tool result
    too (the loop's own bound when it is larger or unset)."""
    bound = LoopLimits().max_result_chars
    if max_output_chars is not None:
        bound = min(bound, max_output_chars)
    return LoopLimits(max_turns=max_turns, max_tool_calls=max_tool_calls, max_result_chars=bound)


def _delegate(
    name: str, tool: ToolSpec, *, plan: RunPlan, scope: RunScope, services: PolicyServices
) -> AbstractToolset[Any]:
    from agentmill.agents.tools.delegation import delegate_toolset
    from agentmill.policy.chain import build_call_agent

    agent, _models = build_call_agent(name, plan=plan, scope=scope, services=services)
    spec = plan.agents[name]
    description = tool.description or spec.instructions or f"Ask the agent '{name}'."
    return delegate_toolset(name, agent=agent, description=description)


def _workspace(
    workdir: str | None, repo: str, base_dir: Path, services: PolicyServices
) -> Workspace:
    """The directory the agent's built-in tools work in: the config's directory by default,
    a directory relative to it, or a git worktree of `repo` per step call."""
    if workdir != WORKTREE:
        return base_dir / workdir if workdir else base_dir
    root = services.settings.worktree_root
    repository = base_dir / repo

    async def open_tree(request: StepRequest) -> Path:
        from agentmill.agents.cli.worktree import open_worktree

        tree = await open_worktree(repository, root, request.run_id, request.step_key)
        return tree.path

    return open_tree
