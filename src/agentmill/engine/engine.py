"""The engine facade: start runs, resume, cancel, follow their events.

One `Engine` per process. It owns the store, the live event bus and DBOS; the CLI and the
server use only this class. An embedded engine executes the runs it submits or resumes itself,
so a second `agentmill` process never picks up (and then interrupts) another one's runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

from sqlalchemy.exc import IntegrityError

from agentmill.engine.approvals import (
    ApprovalRecord,
    ApprovalStatus,
    decide_approval,
    list_approvals,
)
from agentmill.engine.drain import Drain
from agentmill.engine.events import EventBus
from agentmill.engine.execution import RunExecutor, emitter_for, record_cancelled
from agentmill.engine.liveness import Owner, owner_alive, run_settled
from agentmill.engine.plan import RunPlan, build_plan, downstream_of
from agentmill.engine.tool_approvals import tool_approvals_factory
from agentmill.errors import InputError, InvalidStateError, NotFoundError
from agentmill.policy.cache import check_cache_secret, close_response_cache
from agentmill.policy.chain import PolicyServices, is_untrusted_trigger
from agentmill.settings import Settings
from agentmill.spec.inputs import coerce_inputs
from agentmill.spec.models import BudgetSpec, ProjectSpec
from agentmill.store import DEFAULT_TENANT, EventRecord, RunRecord, RunStatus, Store

__all__ = ["TERMINAL_EVENTS", "ConcurrencyMode", "Engine"]

logger = logging.getLogger("agentmill.engine")

TERMINAL_EVENTS = frozenset({"run_finished", "run_interrupted"})
_WATCH_INTERVAL = 0.25
_STOP_GRACE = 10.0

ConcurrencyMode = Literal["supersede", "queue", "allow"]


class Engine:
    """Durable execution of workflow runs in this process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.bus = EventBus()
        self.owner = Owner.of_this_process(settings.executor_id)
        self._store: Store | None = None
        self._executor: RunExecutor | None = None
        self._pending: set[str] = set()
        """Runs submitted or resumed here that have not started executing yet."""
        self._watcher: asyncio.Task[None] | None = None
        self._recovery: asyncio.Task[None] | None = None
        self._launched = False
        self._queued = False
        """Server mode: runs go through the shared DBOS queue to whichever worker is free."""
        self.drain = Drain()

    @property
    def launched(self) -> bool:
        """Whether DBOS runs in this process (runs can be started)."""
        return self._launched

    @property
    def store(self) -> Store:
        if self._store is None:
            raise InvalidStateError("the engine is not started")
        return self._store

    async def start(self, *, launch_workers: bool = True, serve_workers: int | None = None) -> None:
        """Open the store; with `launch_workers`, launch DBOS so runs can start.

        Embedded (`serve_workers` None): this process executes the runs it submits or
        resumes, and nobody else's. Server mode: runs go through the shared queue; with
        `serve_workers` > 0 this process executes up to that many at once and adopts the
        runs of workers that died; with 0 it only enqueues (an API-only server).
        """
        self._store = await Store.open(
            self.settings.resolved_database_url,
            flush_interval=self.settings.event_flush_interval,
        )
        if not launch_workers:
            return
        from agentmill.engine.runtime import launch_dbos, register_run_queue

        self._queued = serve_workers is not None
        self._executor = RunExecutor(
            self._store,
            self.bus,
            self.owner,
            pending=self._pending,
            policies=PolicyServices(
                store=self._store,
                settings=self.settings,
                tool_approvals=tool_approvals_factory(self._store, drain=self.drain),
            ),
            drain=self.drain,
            auto_resume=self._queued,
        )
        listen = bool(serve_workers)
        launch_dbos(self.settings, self.owner.executor_id, self._executor, listen=listen)
        self._launched = True
        if self._queued:
            await register_run_queue(serve_workers or None, update=listen)
        self._watcher = asyncio.create_task(self._watch(), name="agentmill-watch")
        if listen:
            from agentmill.engine.recovery import recover_forever

            self._recovery = asyncio.create_task(recover_forever(self), name="agentmill-recovery")

    async def stop(self, *, grace: float = 0.0) -> None:
        """Let calls in flight finish for up to `grace` seconds, then interrupt the runs
        still executing here (they stay resumable), and shut down."""
        if self._recovery is not None:
            self._recovery.cancel()
            with contextlib.suppress(BaseException):
                await self._recovery
        if self._executor is not None:
            self._executor.stopping = True
            await self.drain.drain(grace)
            tasks = self._executor.interrupt_all()
            if tasks:
                # Waiting on the DBOS workflow tasks lets DBOS record how they ended.
                await asyncio.wait(tasks, timeout=_STOP_GRACE)
            await self._release_pending()
            await close_response_cache(self._executor.policies)
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(BaseException):
                await self._watcher
        if self._launched:
            from agentmill.engine.runtime import destroy_dbos

            await asyncio.to_thread(destroy_dbos, self._executor)
            self._launched = False
            # DBOS made its (now shut down) pool this loop's default executor; replace it.
            asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor())
        if self._store is not None:
            await self._store.close()
            self._store = None

    async def _release_pending(self) -> None:
        """Runs queued here but never started become interrupted, resumable elsewhere."""
        for run_id in list(self._pending):
            await self.store.update_run_if_owner(
                run_id,
                self.owner.executor_id,
                expected_status=RunStatus.PENDING,
                status=RunStatus.INTERRUPTED,
                owner=None,
            )
        self._pending.clear()

    # starting, resuming, cancelling

    async def submit(
        self,
        project: ProjectSpec,
        workflow: str,
        raw_inputs: Mapping[str, Any],
        *,
        config_path: str | None = None,
        tenant: str = DEFAULT_TENANT,
        idempotency_key: str | None = None,
        concurrency_key: str | None = None,
        concurrency_mode: ConcurrencyMode = "allow",
        trigger: dict[str, Any] | None = None,
        budget: BudgetSpec | None = None,
        api_key_id: str | None = None,
    ) -> RunRecord:
        """Validate inputs, record the run with its plan snapshot, and start or queue it.

        With an `idempotency_key`, a repeated submission returns the first run. Runs sharing
        a `concurrency_key` supersede (cancel) or queue behind the active ones. A `budget`
        replaces the workflow's per-run budget; the budgets of `api_key_id` apply too.
        """
        if workflow not in project.workflows:
            known = ", ".join(sorted(project.workflows)) or "none"
            raise NotFoundError(f"no workflow {workflow!r} (workflows: {known})")
        plan = build_plan(project, workflow, base_dir=_base_dir(config_path))
        check_cache_secret(plan, self.settings)
        inputs = coerce_inputs(plan.workflow, raw_inputs)
        if idempotency_key is not None:
            earlier = await self.store.run_by_idempotency_key(tenant, idempotency_key)
            if earlier is not None:
                return _same_request(earlier, workflow, inputs)
        if concurrency_key is not None and concurrency_mode == "supersede":
            await self._supersede(tenant, concurrency_key)
        run = _new_run(
            plan,
            inputs,
            config_path=config_path,
            tenant=tenant,
            owner=None if self._queued else self.owner,
            idempotency_key=idempotency_key,
            concurrency_key=concurrency_key if concurrency_mode != "allow" else None,
            trigger=trigger,
            served=self._queued,
            budget=None if budget is None else budget.model_dump(exclude_none=True),
            api_key_id=api_key_id,
        )
        try:
            await self.store.create_run(run)
        except IntegrityError:
            if idempotency_key is None:
                raise
            earlier = await self.store.run_by_idempotency_key(tenant, idempotency_key)
            assert earlier is not None  # the unique index said so
            return _same_request(earlier, workflow, inputs)
        await self._start_new(run)
        return run

    async def _start_new(self, run: RunRecord) -> None:
        if not self._queued:
            self._pending.add(run.id)
        await self._start_workflow(run.id, run.id)

    async def _supersede(self, tenant: str, concurrency_key: str) -> None:
        """Cancel the active runs a new run with the same concurrency key replaces."""
        for run_id in await self.store.active_runs_with_key(tenant, concurrency_key):
            with contextlib.suppress(InvalidStateError):
                await self.cancel(run_id, tenant=tenant)

    async def retry(
        self, run_id: str, from_step: str, *, tenant: str = DEFAULT_TENANT
    ) -> RunRecord:
        """A new run of the same plan and inputs that re-runs `from_step` and everything
        after it; earlier steps reuse the recorded outputs (no model calls)."""
        run = await self.store.get_run(run_id, tenant=tenant)
        if owner_alive(run, heartbeat_interval=self.settings.heartbeat_interval):
            raise InvalidStateError(f"run {run_id} is still executing: wait for it or cancel it")
        plan = RunPlan.from_json(run.snapshot)
        steps = [step.id for step in plan.workflow.steps]
        if from_step not in steps:
            raise InputError(f"run {run_id} has no step {from_step!r} (steps: {', '.join(steps)})")
        again = downstream_of(plan.workflow, from_step)
        retry = _new_run(
            plan,
            run.inputs,
            config_path=run.config_path,
            tenant=tenant,
            owner=None if self._queued else self.owner,
            parent_run_id=run.id,
            trigger=_retry_trigger(run, from_step),
            served=self._queued,
            budget=run.budget,
            api_key_id=run.api_key_id,
        )
        await self.store.create_run(retry)
        await self.store.copy_steps(run.id, retry.id, step_ids=set(steps) - again)
        await self._start_new(retry)
        return retry

    async def resume(self, run_id: str, *, tenant: str = DEFAULT_TENANT) -> RunRecord:
        """Continue an interrupted, failed or cancelled run; finished calls are not re-run."""
        run = await self.store.get_run(run_id, tenant=tenant)
        if run.status is RunStatus.SUCCEEDED:
            raise InvalidStateError(f"run {run_id} already succeeded; nothing to resume")
        if owner_alive(run, heartbeat_interval=self.settings.heartbeat_interval):
            raise InvalidStateError(
                f"run {run_id} is still being executed by {run.owner}: "
                "wait for it, or cancel it with `agentmill runs cancel`"
            )
        _check_models(RunPlan.from_json(run.snapshot))
        if not self._queued:
            self._pending.add(run_id)
        taken = False
        try:
            taken = await self.store.update_run_if_owner(
                run_id,
                run.owner,
                expected_status=run.status,
                status=RunStatus.PENDING,
                cancel_requested=False,
                error=None,
                auto_resume=False,
                served=self._queued,
                **(_NO_OWNER if self._queued else self.owner.columns()),
            )
            if not taken:
                raise InvalidStateError(f"run {run_id} changed just now; look again with runs show")
            await self._restart_workflow(run)
        except BaseException:
            self._pending.discard(run_id)
            if taken:  # give the run back as it was
                now_owner = None if self._queued else self.owner.executor_id
                await self.store.update_run_if_owner(
                    run_id, now_owner, status=run.status, owner=None
                )
            raise
        return await self.store.get_run(run_id, tenant=tenant)

    async def adopt(self, run: RunRecord) -> bool:
        """Take over a run whose worker died or shut down, and queue it again."""
        taken = await self.store.update_run_if_owner(
            run.id,
            run.owner,
            expected_status=run.status,
            status=RunStatus.PENDING,
            auto_resume=False,
            **_NO_OWNER,
        )
        if taken:
            logger.warning("run %s: its worker %s is gone; continuing it", run.id, run.owner)
            await self._restart_workflow(run)
        return taken

    async def _restart_workflow(self, run: RunRecord) -> None:
        """Start a new DBOS workflow for the run; the last one never finishes."""
        from agentmill.engine.runtime import cancel_stale_workflow

        previous = run.workflow_id or run.id
        await cancel_stale_workflow(previous)
        await self._start_workflow(run.id, _next_workflow_id(run.id, previous))

    async def cancel(self, run_id: str, *, tenant: str = DEFAULT_TENANT) -> RunRecord:
        """Ask the run to stop: at once if it executes here, else at its owner's next check."""
        run = await self.store.get_run(run_id, tenant=tenant)
        if run.status.finished:
            raise InvalidStateError(f"run {run_id} already {run.status}; nothing to cancel")
        await self.store.update_run(run_id, cancel_requested=True)
        if self._executor is not None and run_id in self._executor.active:
            self._executor.cancel(run_id)
        elif not owner_alive(run, heartbeat_interval=self.settings.heartbeat_interval):
            await self._cancel_orphan(run)
        return await self.store.get_run(run_id, tenant=tenant)

    async def _cancel_orphan(self, run: RunRecord) -> None:
        """Cancel a run nobody executes; the compare-and-set keeps a resumer from racing."""
        me = self.owner.executor_id
        if await self.store.update_run_if_owner(run.id, run.owner, owner=me):
            self._pending.discard(run.id)
            emitter = await emitter_for(self.store, self.bus, run.id)
            await record_cancelled(self.store, emitter, owner=me)

    async def _start_workflow(self, run_id: str, workflow_id: str) -> None:
        from agentmill.engine.runtime import enqueue_run_workflow, start_run_workflow

        if not self._launched:
            raise InvalidStateError("the engine was started without workers")
        await self.store.update_run(run_id, workflow_id=workflow_id)
        if self._queued:
            await enqueue_run_workflow(run_id, workflow_id)
        else:
            await start_run_workflow(run_id, workflow_id)

    # following

    async def follow(self, run_id: str, *, after: int = 0) -> AsyncIterator[EventRecord]:
        """The run's events from `after` on: history first, then live, until it ends.

        A run ends when nothing will continue it (`run_settled`), not at the first
        `run_finished` / `run_interrupted`: a resumed run goes on after one, and a served
        run whose worker died goes on when another worker adopts it. Live events come from
        this process's bus; gaps (and runs executing in another process) are filled from
        the database.
        """
        queue = self.bus.subscribe(run_id)
        try:
            last = after
            await self.store.journal.commit()
            backlog: list[EventRecord] | None = await self.store.events(run_id, after=last)
            while backlog is not None:
                for event in backlog:
                    last = event.seq
                    yield event
                    if event.kind in TERMINAL_EVENTS and await self._ends_with(run_id, last):
                        return
                backlog = await self._next_events(queue, run_id, last)
        finally:
            self.bus.unsubscribe(run_id, queue)

    async def _ends_with(self, run_id: str, seq: int) -> bool:
        """Whether the terminal event `seq` is the run's last: nothing came after it and
        nothing will continue the run (its status is written with that event)."""
        await self.store.journal.commit()
        run = await self.store.get_run_any(run_id)
        if not run_settled(run, heartbeat_interval=self.settings.heartbeat_interval):
            return False
        return await self.store.last_seq(run_id) <= seq

    async def _next_events(
        self, queue: asyncio.Queue[EventRecord], run_id: str, last: int
    ) -> list[EventRecord] | None:
        """The events after `last`, waiting briefly; None when the run cannot progress."""
        live = await _next_live(queue)
        if live is not None and live.seq == last + 1:
            return _consecutive(queue, live)
        if live is not None and live.seq <= last:
            return []
        if live is None and self._executes_here(run_id):
            return []  # its events reach the bus first; no need to ask the database
        await self.store.journal.commit()
        backlog = await self.store.events(run_id, after=last)
        if backlog or live is not None or await self._may_progress(run_id):
            return backlog
        # Its end may have been written between the read and the status check.
        return await self.store.events(run_id, after=last) or None

    def _executes_here(self, run_id: str) -> bool:
        return self._executor is not None and run_id in self._executor.active

    def executes(self, run_id: str) -> bool:
        """Whether this process is executing the run, or about to."""
        return run_id in self._pending or self._executes_here(run_id)

    async def _may_progress(self, run_id: str) -> bool:
        if self.executes(run_id):
            return True
        run = await self.store.get_run_any(run_id)
        if run.owner == self.owner.executor_id and not run.served:
            return False  # ours, yet neither pending nor executing here: nothing will move it
        return not run_settled(run, heartbeat_interval=self.settings.heartbeat_interval)

    async def wait(self, run_id: str) -> RunRecord:
        """Wait until the run has ended for good (as `follow`), then return the run."""
        if await self._may_progress(run_id):
            async for _ in self.follow(run_id, after=await self.store.last_seq(run_id)):
                pass
        return await self.store.get_run_any(run_id)

    # background upkeep

    async def _watch(self) -> None:
        """Heartbeat this process's runs and pick up cancel requests made elsewhere."""
        beat_every = max(1, round(self.settings.heartbeat_interval / _WATCH_INTERVAL))
        tick = 0
        while True:
            await asyncio.sleep(_WATCH_INTERVAL)
            tick += 1
            try:
                await self._watch_once(heartbeat=tick % beat_every == 0)
            except Exception as exc:  # noqa: BLE001 - keep heartbeating through a DB hiccup
                logger.warning("run upkeep failed, will retry: %s", exc)

    async def _watch_once(self, *, heartbeat: bool) -> None:
        assert self._executor is not None
        active = list(self._executor.active)
        mine = active + sorted(self._pending)
        for run_id in await self.store.cancel_requested(mine):
            if run_id in self._executor.active:
                self._executor.cancel(run_id)
        # A run we own whose row names another owner, or none (adopted after our heartbeat
        # lapsed), was taken over: stop. A queued run not taken yet has no owner either.
        taken = self._executor.taken
        for run_id, owner in (await self.store.owners(active)).items():
            if owner != self.owner.executor_id and (owner is not None or run_id in taken):
                self._executor.interrupt(run_id)
        if heartbeat:
            await self.store.heartbeat(mine, owner=self.owner.executor_id)

    # approvals

    async def decide(
        self,
        run_id: str,
        step_id: str,
        *,
        approve: bool,
        comment: str | None = None,
        by: str,
        tenant: str = DEFAULT_TENANT,
        arguments: dict[str, Any] | None = None,
    ) -> ApprovalRecord:
        """Approve or reject a waiting gate once (a tool call's: maybe with edited arguments)."""
        return await decide_approval(
            self.store,
            run_id,
            step_id,
            approve=approve,
            comment=comment,
            by=by,
            tenant=tenant,
            notify=self._launched,
            arguments=arguments,
        )

    async def approvals(
        self,
        *,
        tenant: str = DEFAULT_TENANT,
        status: ApprovalStatus | None = None,
        run_id: str | None = None,
    ) -> list[ApprovalRecord]:
        """A tenant's approvals (optionally of one run), newest first."""
        return await list_approvals(self.store, tenant=tenant, status=status, run_id=run_id)


def _retry_trigger(run: RunRecord, from_step: str) -> dict[str, Any]:
    """Where a retried run came from; it keeps its parent's inputs, so a webhook's
    untrusted inputs stay untrusted."""
    trigger: dict[str, Any] = {"source": "retry", "run": run.id, "from_step": from_step}
    if is_untrusted_trigger(run.trigger):
        trigger["untrusted"] = True
    return trigger


def _check_models(plan: RunPlan) -> None:
    from agentmill.agents.models import check_model

    for ref in plan.models.values():
        check_model(ref)
    for refs in plan.fallbacks.values():
        for ref in refs:
            check_model(ref)


def _next_workflow_id(run_id: str, current: str) -> str:
    """`<run>` -> `<run>.2` -> `<run>.3`: one DBOS workflow per execution of a run."""
    _, _, suffix = current.partition(".")
    return f"{run_id}.{int(suffix or 1) + 1}"


async def _next_live(queue: asyncio.Queue[EventRecord]) -> EventRecord | None:
    """The next live event, waiting up to one watch interval (no task per event)."""
    if not queue.empty():
        return queue.get_nowait()
    try:
        async with asyncio.timeout(_WATCH_INTERVAL):
            return await queue.get()
    except TimeoutError:
        return None


def _consecutive(queue: asyncio.Queue[EventRecord], first: EventRecord) -> list[EventRecord]:
    """`first` and the queued events that directly follow it, up to a terminal event."""
    batch = [first]
    while batch[-1].kind not in TERMINAL_EVENTS and not queue.empty():
        following = queue.get_nowait()
        if following.seq <= batch[-1].seq:
            continue  # already seen (read from the database before it came live)
        if following.seq != batch[-1].seq + 1:
            # A gap: the next call fills it from the database, which has every event.
            queue.put_nowait(following)
            break
        batch.append(following)
    return batch


_NO_OWNER: dict[str, Any] = dict.fromkeys(("owner", "owner_pid", "owner_host", "heartbeat_at"))


def _same_request(run: RunRecord, workflow: str, inputs: dict[str, Any]) -> RunRecord:
    """The run an idempotency key already started, if the request is the same."""
    if run.workflow != workflow or run.inputs != inputs:
        raise InvalidStateError(
            f"this Idempotency-Key was used for a different request (run {run.id}); "
            "send a new key for a new run"
        )
    return run


def _new_run(
    plan: RunPlan,
    inputs: dict[str, Any],
    *,
    config_path: str | None,
    tenant: str,
    owner: Owner | None,
    **extra: Any,
) -> RunRecord:
    owned = _NO_OWNER if owner is None else owner.columns()
    return RunRecord(
        id=uuid.uuid4().hex[:20],
        tenant=tenant,
        workflow=plan.workflow_name,
        status=RunStatus.PENDING,
        inputs=inputs,
        outputs=None,
        error=None,
        snapshot=plan.to_json(),
        config_path=config_path,
        usage=None,
        created_at=time.time(),
        started_at=None,
        finished_at=None,
        cancel_requested=False,
        **owned,
        **extra,
    )


def _base_dir(config_path: str | None) -> str:
    """Where relative paths of the config file start: its directory, else the current one."""
    if config_path is None:
        return str(Path.cwd())
    return str(Path(config_path).resolve().parent)
