"""Interpreting a run's plan: the step DAG, `when`, `foreach`, approval gates, caps.

Independent steps run concurrently; a step starts as soon as everything it `needs` is
done. A failed step blocks its dependents but lets independent branches finish, so their
work is kept for a resume. Finished calls come from their checkpoints, never re-run.
An approval gate waits without holding a call slot, so gates in several branches can
wait at once while other work goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

from agentmill.agents.base import Agent, StepRequest, Usage
from agentmill.engine.approvals import Gate, run_gate
from agentmill.engine.calls import CallSpec, run_call
from agentmill.engine.drain import Drain
from agentmill.engine.events import RunEmitter
from agentmill.engine.plan import RunPlan
from agentmill.errors import RunFailure, UserError, shown_error
from agentmill.policy.chain import PolicyServices, RunScope, build_call_agent
from agentmill.policy.guard import untrusted_sources
from agentmill.spec.models import StepSpec
from agentmill.spec.templates import evaluate, is_truthy, render
from agentmill.store import StepRecord, StepStatus

__all__ = ["NodeOutcome", "RunInterpreter", "RunOutcome"]

logger = logging.getLogger("agentmill.engine")


@dataclass(frozen=True, kw_only=True)
class NodeOutcome:
    status: StepStatus
    output: Any = None
    error: str | None = None
    usage: Usage = field(default_factory=Usage)
    details: dict[str, Any] | None = None


class DiffView(dict[str, Any]):
    """`steps.<id>.diff` of a command-line step in a worktree: renders as the `git diff
    --stat` summary followed by the patch; `.files`, `.stat` and `.patch` read the parts."""

    def __str__(self) -> str:
        return "\n".join(part for part in (self.get("stat"), self.get("patch")) if part)


@dataclass(frozen=True, kw_only=True)
class RunOutcome:
    succeeded: bool
    outputs: dict[str, Any]
    error: str | None
    usage: Usage

    @classmethod
    def failure(cls, error: str) -> RunOutcome:
        return cls(succeeded=False, outputs={}, error=error, usage=Usage())


class RunInterpreter:
    """Runs one plan to its end, reusing the checkpoints of an earlier attempt."""

    def __init__(
        self,
        *,
        scope: RunScope,
        plan: RunPlan,
        inputs: dict[str, Any],
        services: PolicyServices,
        emitter: RunEmitter,
        checkpoints: dict[str, StepRecord],
        drain: Drain | None = None,
    ) -> None:
        self._scope = scope
        self._run_id = scope.run_id
        self._tenant = scope.tenant
        self._services = services
        store = services.store
        self._drain = drain or Drain()
        self._plan = plan
        self._inputs = inputs
        self._store = store
        self._emitter = emitter
        self._checkpoints = checkpoints
        self._agents: dict[str, tuple[Agent, int]] = {}
        self._nodes: dict[str, asyncio.Future[NodeOutcome]] = {}
        self._views: dict[str, dict[str, Any]] = {}
        """Template view of every finished step, kept up to date as steps finish."""
        limit = plan.workflow.concurrency
        self._run_slots = asyncio.Semaphore(limit) if limit else None

    async def execute(self) -> RunOutcome:
        loop = asyncio.get_running_loop()
        steps = self._plan.workflow.steps
        self._nodes = {step.id: loop.create_future() for step in steps}
        async with asyncio.TaskGroup() as group:
            for step in steps:
                group.create_task(self._node(step), name=f"step:{step.id}")
        outcomes = {step_id: future.result() for step_id, future in self._nodes.items()}
        return self._finish(outcomes)

    async def _node(self, step: StepSpec) -> None:
        future = self._nodes[step.id]
        try:
            outcome = await self._run_node(step)
        except RunFailure as exc:
            outcome = self._node_failed(step, str(exc))
        except UserError as exc:  # e.g. a model whose key is gone since the run started
            outcome = self._node_failed(step, str(exc))
        except Exception as exc:  # noqa: BLE001 - logged with an id by shown_error
            shown = shown_error(exc, log=logger, doing=f"step {step.id}")
            outcome = self._node_failed(step, str(shown))
        self._views[step.id] = _view(step, outcome)
        future.set_result(outcome)

    def _node_failed(self, step: StepSpec, error: str) -> NodeOutcome:
        self._emitter.emit("step_failed", step=step.id, error=f"step '{step.id}': {error}")
        return NodeOutcome(status=StepStatus.FAILED, error=f"step '{step.id}' failed: {error}")

    async def _run_node(self, step: StepSpec) -> NodeOutcome:
        upstream = {dep: await self._nodes[dep] for dep in step.needs}
        blocked = [dep for dep, o in upstream.items() if o.status is StepStatus.FAILED]
        if blocked:
            self._emitter.emit("step_blocked", step=step.id, because=blocked)
            return NodeOutcome(status=StepStatus.FAILED, error=f"blocked by failed {blocked}")
        context = self._template_context()
        if step.when is not None and not is_truthy(evaluate(step.when, context)):
            return await self._skip(step)
        if step.approval is not None:
            return await self._gate(step, context)
        if step.foreach is not None:
            return await self._fan_out(step, context)
        prompt = render(step.prompt, context)
        record = await self._call(step, prompt, index=None)
        return _node_outcome(record)

    def _template_context(self) -> dict[str, Any]:
        """Inputs and finished steps; validation allows templates to read only upstream ones."""
        return {"inputs": self._inputs, "steps": self._views}

    async def _skip(self, step: StepSpec) -> NodeOutcome:
        self._store.journal.put_step(
            StepRecord(
                run_id=self._run_id,
                key=step.id,
                step_id=step.id,
                item_index=None,
                status=StepStatus.SKIPPED,
                attempt=0,
            )
        )
        self._emitter.emit("step_skipped", step=step.id)
        return NodeOutcome(status=StepStatus.SKIPPED)

    async def _fan_out(self, step: StepSpec, context: dict[str, Any]) -> NodeOutcome:
        items = evaluate(step.foreach or "", context)
        if not isinstance(items, list | tuple):
            raise RunFailure(
                f"step '{step.id}': foreach must give a list, got {type(items).__name__}"
            )
        slots = asyncio.Semaphore(step.concurrency) if step.concurrency else None
        prompts = [
            render(step.prompt, {**context, "item": item, "index": index})
            for index, item in enumerate(items)
        ]

        async def one(index: int, prompt: str) -> StepRecord:
            async with _maybe(slots):
                return await self._call(step, prompt, index=index)

        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(i, p)) for i, p in enumerate(prompts)]
        records = [task.result() for task in tasks]
        failed = [r for r in records if r.status is StepStatus.FAILED]
        usage = sum((_usage(r) for r in records), Usage())
        if failed:
            return NodeOutcome(status=StepStatus.FAILED, error=failed[0].error, usage=usage)
        return NodeOutcome(
            status=StepStatus.SUCCEEDED, output=[r.output for r in records], usage=usage
        )

    async def _gate(self, step: StepSpec, context: dict[str, Any]) -> NodeOutcome:
        """Wait for a person's decision; no call slot is held meanwhile."""
        assert step.approval is not None
        gate = Gate(
            run_id=self._run_id,
            tenant=self._tenant,
            step_id=step.id,
            approval=step.approval,
            prompt=render(step.approval.prompt, context),
        )
        record = await run_gate(
            gate,
            store=self._store,
            emitter=self._emitter,
            previous=self._checkpoints.get(step.id),
        )
        return _node_outcome(record)

    async def _call(self, step: StepSpec, prompt: str, *, index: int | None) -> StepRecord:
        assert step.agent is not None
        agent_spec = self._plan.agents[step.agent]
        untrusted = untrusted_sources(
            step.prompt,
            self._plan.workflow,
            self._inputs,
            triggered=self._scope.triggered,
            foreach=step.foreach,
        )
        request = StepRequest(
            run_id=self._run_id, step_id=step.id, prompt=prompt, index=index, untrusted=untrusted
        )
        agent, models = self._agent(step.agent)
        call = CallSpec(
            request=request,
            agent=agent,
            retries=step.retries if step.retries is not None else agent_spec.retries,
            backoff=step.backoff,
            timeout=step.timeout or agent_spec.timeout,
            models=models,
            agent_name=step.agent,
        )
        async with _maybe(self._run_slots), self._drain.call():
            return await run_call(
                call,
                store=self._store,
                emitter=self._emitter,
                previous=self._checkpoints.get(request.key),
                drain=self._drain,
            )

    def _agent(self, name: str) -> tuple[Agent, int]:
        if name not in self._agents:
            self._agents[name] = build_call_agent(
                name, plan=self._plan, scope=self._scope, services=self._services
            )
        return self._agents[name]

    def _finish(self, outcomes: dict[str, NodeOutcome]) -> RunOutcome:
        usage = sum((o.usage for o in outcomes.values()), Usage())
        failed = {k: o for k, o in outcomes.items() if o.status is StepStatus.FAILED}
        if failed:
            first = next(o.error for o in failed.values() if o.error)
            return RunOutcome(succeeded=False, outputs={}, error=first, usage=usage)
        try:
            outputs = self._outputs(outcomes)
        except RunFailure as exc:
            return RunOutcome(
                succeeded=False, outputs={}, error=f"workflow outputs: {exc}", usage=usage
            )
        return RunOutcome(succeeded=True, outputs=outputs, error=None, usage=usage)

    def _outputs(self, outcomes: dict[str, NodeOutcome]) -> dict[str, Any]:
        workflow = self._plan.workflow
        if workflow.outputs:
            context = self._template_context()
            return {name: render(tpl, context) for name, tpl in workflow.outputs.items()}
        needed = {dep for step in workflow.steps for dep in step.needs}
        return {
            step.id: outcomes[step.id].output
            for step in workflow.steps
            if step.id not in needed and outcomes[step.id].status is StepStatus.SUCCEEDED
        }


def _view(step: StepSpec, outcome: NodeOutcome) -> dict[str, Any]:
    """What templates downstream read of a finished step (`steps.<id>.…`)."""
    view: dict[str, Any] = {
        "output": outcome.output,
        "skipped": outcome.status is StepStatus.SKIPPED,
        "usage": outcome.usage.to_json(),
    }
    if step.agent is not None:
        diff = (outcome.details or {}).get("diff")
        view["diff"] = DiffView(diff) if isinstance(diff, dict) else None
    if step.approval is not None:
        decision: dict[str, Any] = outcome.output if isinstance(outcome.output, dict) else {}
        view["approved"] = bool(decision.get("approved", False))
        view["comment"] = decision.get("comment")
    return view


def _node_outcome(record: StepRecord) -> NodeOutcome:
    return NodeOutcome(
        status=record.status,
        output=record.output,
        error=record.error,
        usage=_usage(record),
        details=record.details,
    )


def _usage(record: StepRecord) -> Usage:
    return Usage.from_json(record.usage or {})


@contextlib.asynccontextmanager
async def _maybe(semaphore: asyncio.Semaphore | None) -> AsyncGenerator[None]:
    if semaphore is None:
        yield
        return
    async with semaphore:
        yield
