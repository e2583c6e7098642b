"""The engine facade: start runs, resume, cancel, follow their events, execute them.

One `Engine` per process. It owns the store, the live event bus and DBOS; the CLI and the
server use only this class.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from agentmill.engine.events import EventBus, RunEmitter
from agentmill.engine.interpreter import RunInterpreter, RunOutcome
from agentmill.engine.liveness import owner_alive
from agentmill.engine.plan import RunPlan, build_plan
from agentmill.errors import InvalidStateError
from agentmill.logs import current_run
from agentmill.settings import Settings
from agentmill.spec.inputs import coerce_inputs
from agentmill.spec.models import ProjectSpec
from agentmill.store import DEFAULT_TENANT, EventRecord, RunRecord, RunStatus, Store

if TYPE_CHECKING:
    from dbos import Queue

__all__ = ["TERMINAL_EVENTS", "Engine"]

logger = logging.getLogger("agentmill.engine")

TERMINAL_EVENTS = frozenset({"run_finished", "run_interrupted"})
_WATCH_INTERVAL = 0.25


class Engine:
    """Durable execution of workflow runs in this process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.bus = EventBus()
        self._store: Store | None = None
        self._executor_id = settings.executor_id or ""
        self._active: dict[str, asyncio.Task[Any]] = {}
        self._cancelling: set[str] = set()
        self._finishing: set[str] = set()
        self._done: dict[str, asyncio.Event] = {}
        self._watcher: asyncio.Task[None] | None = None
        self._launched = False
        self._queue: Queue | None = None

    @property
    def store(self) -> Store:
        if self._store is None:
            raise InvalidStateError("the engine is not started")
        return self._store

    async def start(self, *, launch_workers: bool = True) -> None:
        """Open the store; with `launch_workers`, launch DBOS so runs execute here."""
        self._store = await Store.open(
            self.settings.resolved_database_url,
            flush_interval=self.settings.event_flush_interval,
        )
        if launch_workers:
            from agentmill.engine.runtime import launch_dbos, new_executor_id

            self._executor_id = self.settings.executor_id or new_executor_id()
            self._queue = await launch_dbos(self.settings, self._executor_id, self)
            self._launched = True
            self._watcher = asyncio.create_task(self._watch(), name="agentmill-watch")

    async def stop(self) -> None:
        """Interrupt runs still executing here (they stay resumable), then shut down."""
        for run_id, task in list(self._active.items()):
            if run_id not in self._finishing:
                task.cancel()
        if self._active:
            # Waiting on the DBOS workflow tasks themselves lets DBOS record their outcome.
            await asyncio.wait(list(self._active.values()), timeout=10)
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        if self._launched:
            from agentmill.engine.runtime import destroy_dbos

            await asyncio.to_thread(destroy_dbos, self)
            self._launched = False
            # DBOS made its (now shut down) pool this loop's default executor; replace it.
            asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor())
        if self._store is not None:
            await self._store.close()
            self._store = None

    # starting, resuming, cancelling

    async def submit(
        self,
        project: ProjectSpec,
        workflow: str,
        raw_inputs: Mapping[str, Any],
        *,
        config_path: str | None = None,
        tenant: str = DEFAULT_TENANT,
    ) -> RunRecord:
        """Validate inputs, record the run with its plan snapshot, and queue it."""
        plan = build_plan(project, workflow)
        inputs = coerce_inputs(plan.workflow, raw_inputs)
        run = _new_run(plan, inputs, config_path=config_path, tenant=tenant)
        await self.store.create_run(run)
        await self._enqueue(run.id)
        return run

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
        await self.store.update_run(
            run_id, status=RunStatus.PENDING, cancel_requested=False, owner=None, error=None
        )
        await self._restart_workflow(run)
        return await self.store.get_run(run_id, tenant=tenant)

    async def _restart_workflow(self, run: RunRecord) -> None:
        """Resume the run's DBOS workflow if it never finished, else start a new one."""
        from dbos import DBOS

        from agentmill.engine.runtime import RUN_QUEUE

        workflow_id = run.workflow_id or run.id
        status = await DBOS.get_workflow_status_async(workflow_id)
        if status is not None and status.status in {"PENDING", "ENQUEUED", "CANCELLED"}:
            await DBOS.resume_workflow_async(workflow_id, queue_name=RUN_QUEUE)
            return
        await self._enqueue(run.id, _next_workflow_id(run.id, workflow_id))

    async def cancel(self, run_id: str, *, tenant: str = DEFAULT_TENANT) -> RunRecord:
        """Ask the run to stop; it stops at once here, or at its owner's next check."""
        run = await self.store.get_run(run_id, tenant=tenant)
        if run.status.finished:
            raise InvalidStateError(f"run {run_id} already {run.status}; nothing to cancel")
        await self.store.update_run(run_id, cancel_requested=True)
        if run_id in self._active:
            self._cancel_local(run_id)
        elif not owner_alive(run, heartbeat_interval=self.settings.heartbeat_interval):
            await self._mark_cancelled_offline(run)
        return await self.store.get_run(run_id, tenant=tenant)

    async def _enqueue(self, run_id: str, workflow_id: str | None = None) -> None:
        from dbos import SetWorkflowID

        from agentmill.engine.runtime import agentmill_run

        if self._queue is None:
            raise InvalidStateError("the engine was started without workers")
        workflow_id = workflow_id or run_id
        await self.store.update_run(run_id, workflow_id=workflow_id)
        with SetWorkflowID(workflow_id):
            await self._queue.enqueue_async(agentmill_run, run_id)

    async def _mark_cancelled_offline(self, run: RunRecord) -> None:
        from dbos import DBOS

        await DBOS.cancel_workflow_async(run.workflow_id or run.id)
        await self.store.update_run(run.id, status=RunStatus.CANCELLED, finished_at=time.time())
        emitter = await self._emitter(run.id)
        emitter.emit("run_finished", status=str(RunStatus.CANCELLED), error="cancelled")
        await self.store.journal.commit()

    def _cancel_local(self, run_id: str) -> None:
        self._cancelling.add(run_id)
        self._active[run_id].cancel()

    # following

    async def follow(self, run_id: str, *, after: int = 0) -> AsyncIterator[EventRecord]:
        """The run's events from `after` on: history first, then live, until it ends.

        Live events come from this process's bus; gaps (and runs executing in another
        process) are filled from the database.
        """
        queue = self.bus.subscribe(run_id)
        try:
            await self.store.journal.commit()
            last = after
            while True:
                try:
                    live = await asyncio.wait_for(queue.get(), _WATCH_INTERVAL)
                except TimeoutError:
                    live = None
                if live is not None and live.seq <= last:
                    continue
                if live is None or live.seq > last + 1:
                    await self.store.journal.commit()
                    backlog = await self.store.events(run_id, after=last)
                    if live is None and not backlog and not await self._may_progress(run_id):
                        return
                else:
                    backlog = [live]
                for event in backlog:
                    if event.seq <= last:
                        continue
                    last = event.seq
                    yield event
                    if event.kind in TERMINAL_EVENTS:
                        return
        finally:
            self.bus.unsubscribe(run_id, queue)

    async def _may_progress(self, run_id: str) -> bool:
        run = await self.store.get_run_any(run_id)
        if run.id in self._active or run.status is RunStatus.PENDING:
            return True
        return owner_alive(run, heartbeat_interval=self.settings.heartbeat_interval)

    async def wait(self, run_id: str) -> RunRecord:
        """Wait until the run's current execution ends, then return the run."""
        run = await self.store.get_run_any(run_id)
        if run.status is not RunStatus.PENDING and not await self._may_progress(run_id):
            return run
        async for _ in self.follow(run_id, after=await self.store.last_seq(run_id)):
            pass
        return await self.store.get_run_any(run_id)

    # execution (called by the DBOS workflow)

    async def execute_run(self, run_id: str) -> dict[str, Any]:
        store = self.store
        run = await store.get_run_any(run_id)
        if run.status.finished:
            return {"status": str(run.status)}
        task = asyncio.current_task()
        assert task is not None
        self._active[run_id] = task
        task.add_done_callback(lambda _: self._forget(run_id))
        current_run.set(run_id)
        emitter = await self._emitter(run_id)
        return await self._execute(run, emitter)

    def _forget(self, run_id: str) -> None:
        self._active.pop(run_id, None)
        self._cancelling.discard(run_id)
        self._finishing.discard(run_id)

    async def _execute(self, run: RunRecord, emitter: RunEmitter) -> dict[str, Any]:
        checkpoints = {record.key: record for record in await self.store.steps(run.id)}
        await self._claim(run)
        emitter.emit(
            "run_resumed" if checkpoints else "run_started",
            workflow=run.workflow,
            reused=sorted(k for k, r in checkpoints.items() if r.status == "succeeded"),
        )
        interpreter = RunInterpreter(
            run_id=run.id,
            plan=RunPlan.from_json(run.snapshot),
            inputs=run.inputs,
            store=self.store,
            emitter=emitter,
            checkpoints=checkpoints,
        )
        try:
            outcome = await interpreter.execute()
        except asyncio.CancelledError:
            if run.id not in self._cancelling:
                await self._record_interrupted(run.id, emitter)
                raise
            _uncancel()
            self._finishing.add(run.id)
            return await self._record_cancelled(run.id, emitter)
        self._finishing.add(run.id)
        return await self._record_outcome(run.id, outcome, emitter)

    async def _claim(self, run: RunRecord) -> None:
        now = time.time()
        await self.store.update_run(
            run.id,
            status=RunStatus.RUNNING,
            started_at=run.started_at or now,
            owner=self._executor_id,
            owner_pid=os.getpid(),
            owner_host=socket.gethostname(),
            heartbeat_at=now,
            finished_at=None,
        )

    async def _record_outcome(
        self, run_id: str, outcome: RunOutcome, emitter: RunEmitter
    ) -> dict[str, Any]:
        status = RunStatus.SUCCEEDED if outcome.succeeded else RunStatus.FAILED
        await self.store.update_run(
            run_id,
            status=status,
            outputs=outcome.outputs,
            error=outcome.error,
            usage=outcome.usage.to_json(),
            finished_at=time.time(),
        )
        emitter.emit(
            "run_finished",
            status=str(status),
            error=outcome.error,
            outputs=outcome.outputs,
            usage=outcome.usage.to_json(),
        )
        await self.store.journal.commit()
        return {"status": str(status)}

    async def _record_cancelled(self, run_id: str, emitter: RunEmitter) -> dict[str, Any]:
        await self.store.update_run(run_id, status=RunStatus.CANCELLED, finished_at=time.time())
        emitter.emit("run_finished", status=str(RunStatus.CANCELLED), error="cancelled")
        await self.store.journal.commit()
        return {"status": str(RunStatus.CANCELLED)}

    async def _record_interrupted(self, run_id: str, emitter: RunEmitter) -> None:
        await self.store.update_run(run_id, status=RunStatus.INTERRUPTED, owner=None)
        emitter.emit("run_interrupted")
        await self.store.journal.commit()

    async def _emitter(self, run_id: str) -> RunEmitter:
        await self.store.journal.commit()
        last = await self.store.last_seq(run_id)
        return RunEmitter(run_id, self.store, self.bus, last_seq=last)

    async def _watch(self) -> None:
        """Heartbeat the runs executing here and pick up cancel requests from elsewhere."""
        beat_every = max(1, round(self.settings.heartbeat_interval / _WATCH_INTERVAL))
        tick = 0
        while True:
            await asyncio.sleep(_WATCH_INTERVAL)
            tick += 1
            active = list(self._active)
            try:
                for run_id in await self.store.cancel_requested(active):
                    if run_id in self._active and run_id not in self._cancelling:
                        self._cancel_local(run_id)
                if tick % beat_every == 0:
                    await self.store.heartbeat(active)
            except OSError as exc:
                logger.warning("heartbeat failed: %s", exc)


def _next_workflow_id(run_id: str, current: str) -> str:
    """`<run>` -> `<run>.2` -> `<run>.3`: one DBOS workflow per execution of a run."""
    _, _, suffix = current.partition(".")
    return f"{run_id}.{int(suffix or 1) + 1}"


def _uncancel() -> None:
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()


def _new_run(
    plan: RunPlan, inputs: dict[str, Any], *, config_path: str | None, tenant: str
) -> RunRecord:
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
        owner=None,
        owner_pid=None,
        owner_host=None,
        heartbeat_at=None,
        cancel_requested=False,
    )
