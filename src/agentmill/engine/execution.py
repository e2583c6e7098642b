"""Executing one run inside the DBOS workflow: claim, interpret, record how it ended.

Every way a run can end is recorded, its terminal event and its final status in one
transaction, so a follower never sees one without the other:
- finished (succeeded or failed, including an unexpected error: recorded, never left hanging);
- cancelled (someone asked); the checkpoints stay, so it can be resumed;
- interrupted (this process is stopping): DBOS keeps the workflow pending for a resume.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from agentmill.engine.drain import Drain
from agentmill.engine.events import EventBus, RunEmitter
from agentmill.engine.interpreter import RunInterpreter, RunOutcome
from agentmill.engine.liveness import Owner
from agentmill.engine.plan import RunPlan
from agentmill.errors import shown_error
from agentmill.logs import current_run
from agentmill.policy.budget import release_run_holds
from agentmill.policy.chain import PolicyServices, RunScope, is_untrusted_trigger
from agentmill.store import RunRecord, RunStatus, StepStatus, Store

__all__ = ["RunExecutor"]

logger = logging.getLogger("agentmill.engine")

_TURN_POLL = 0.5


class RunExecutor:
    """Runs executing in this process, and the bookkeeping to cancel or interrupt them."""

    def __init__(
        self,
        store: Store,
        bus: EventBus,
        owner: Owner,
        *,
        pending: set[str],
        policies: PolicyServices,
        drain: Drain | None = None,
        auto_resume: bool = False,
    ) -> None:
        self._store = store
        self.policies = policies
        self._bus = bus
        self._owner = owner
        self._pending = pending
        """The engine's runs submitted here and not started yet; shared, updated here."""
        self.drain = drain or Drain()
        self._auto_resume = auto_resume
        """Server workers: a run interrupted by shutdown is continued by the next worker."""
        self.active: dict[str, asyncio.Task[Any]] = {}
        self._cancelling: set[str] = set()
        self._finishing: set[str] = set()
        self.taken: set[str] = set()
        """Active runs this process owns in the database (a queued run, once taken)."""
        self.stopping = False

    async def execute(self, run_id: str) -> dict[str, Any]:
        try:
            await self._previous_ended(run_id)
        except asyncio.CancelledError:
            await self._give_back(run_id)
            raise
        if self.stopping:
            await self._give_back(run_id)
            raise asyncio.CancelledError  # started during shutdown: not executed here
        task = asyncio.current_task()
        assert task is not None
        self.active[run_id] = task
        task.add_done_callback(lambda done: self._forget(run_id, done))
        current_run.set(run_id)
        try:
            run = await self._store.get_run_any(run_id)
            emitter = await emitter_for(self._store, self._bus, run_id)
        except asyncio.CancelledError:
            await self._give_back(run_id)
            raise
        except Exception:
            self._pending.discard(run_id)  # nothing will execute it here: followers may stop
            raise
        if run.status.finished:
            self._pending.discard(run_id)
            return {"status": str(run.status)}
        try:
            return await self._execute(run, emitter)
        except asyncio.CancelledError:
            if run_id not in self._cancelling:
                await self._give_back(run_id)
                await self._record_interrupted(run_id, emitter)
                raise
            _uncancel()
            return await self._record_cancelled(run_id, emitter)
        except Exception as exc:  # noqa: BLE001 - logged with an id by shown_error
            shown = shown_error(exc, log=logger, doing=f"run {run_id}")
            return await self._record_outcome(run_id, RunOutcome.failure(str(shown)), emitter)

    def cancel(self, run_id: str) -> None:
        """Cancel a run executing here, unless it is already recording its end."""
        if run_id in self.active and run_id not in self._finishing | self._cancelling:
            self._cancelling.add(run_id)
            self.active[run_id].cancel()

    def interrupt(self, run_id: str) -> None:
        """Stop executing a run this process no longer owns; its new owner goes on."""
        if run_id in self.active and run_id not in self._finishing:
            logger.warning("run %s was taken over by another process; stopping here", run_id)
            self.active[run_id].cancel()

    def interrupt_all(self) -> list[asyncio.Task[Any]]:
        """Interrupt every run not already finishing; returns the tasks to wait for."""
        self.stopping = True
        for run_id, task in self.active.items():
            if run_id not in self._finishing:
                task.cancel()
        return list(self.active.values())

    async def _give_back(self, run_id: str) -> None:
        """A queued run dequeued during shutdown: hand it to the next worker."""
        await self._store.update_run_if_owner(
            run_id,
            None,
            expected_status=RunStatus.PENDING,
            status=RunStatus.INTERRUPTED,
            auto_resume=True,
        )

    async def _previous_ended(self, run_id: str) -> None:
        """Wait until the run's previous execution here has ended. A resume (or an
        adoption) is accepted once a cancelled or interrupted execution has recorded its
        end, while it may still be releasing holds and DBOS recording it: one execution
        per run at a time keeps the run's bookkeeping (heartbeats, cancels) the new one's."""
        while (previous := self.active.get(run_id)) is not None:
            await asyncio.wait({previous})

    def _forget(self, run_id: str, task: asyncio.Task[Any]) -> None:
        if self.active.get(run_id) is not task:
            return  # a later execution of the run owns the bookkeeping now
        self.active.pop(run_id)
        self.taken.discard(run_id)
        self._cancelling.discard(run_id)
        self._finishing.discard(run_id)

    async def _execute(self, run: RunRecord, emitter: RunEmitter) -> dict[str, Any]:
        if not await self._take(run):
            self._pending.discard(run.id)
            logger.warning("run %s is no longer this process's to execute", run.id)
            return {"status": "not-owner"}
        if run.concurrency_key is not None:
            await self._wait_turn(run, emitter)
        checkpoints = {record.key: record for record in await self._store.steps(run.id)}
        claimed = await self._claim(run)
        self._pending.discard(run.id)
        if not claimed:
            logger.warning("run %s is no longer this process's to execute", run.id)
            return {"status": "not-owner"}
        if await self._store.cancel_requested([run.id]):
            return await self._record_cancelled(run.id, emitter)
        emitter.emit(
            "run_resumed" if checkpoints else "run_started",
            workflow=run.workflow,
            reused=sorted(k for k, r in checkpoints.items() if r.status is StepStatus.SUCCEEDED),
        )
        interpreter = RunInterpreter(
            scope=RunScope(
                run_id=run.id,
                tenant=run.tenant,
                workflow=run.workflow,
                api_key_id=run.api_key_id,
                budget=run.budget,
                triggered=is_untrusted_trigger(run.trigger),
            ),
            plan=RunPlan.from_json(run.snapshot),
            inputs=run.inputs,
            services=self.policies,
            emitter=emitter,
            checkpoints=checkpoints,
            drain=self.drain,
        )
        outcome = await interpreter.execute()
        return await self._record_outcome(run.id, outcome, emitter)

    async def _wait_turn(self, run: RunRecord, emitter: RunEmitter) -> None:
        """Queue behind older active runs sharing the run's concurrency key."""
        assert run.concurrency_key is not None
        announced = False
        while ahead := await self._store.active_runs_with_key(
            run.tenant, run.concurrency_key, before=run.created_at, exclude=run.id
        ):
            if not announced:
                emitter.emit("run_queued", behind=ahead)
                announced = True
            await asyncio.sleep(_TURN_POLL)

    async def _take(self, run: RunRecord) -> bool:
        """Own a queued run (still pending) before anything else, so that a cancel, a
        shutdown or a crash while it waits for its turn is recorded like any other."""
        mine = run.owner == self._owner.executor_id
        if not mine and run.owner is None:
            mine = await self._store.update_run_if_owner(
                run.id, None, expected_status=RunStatus.PENDING, **self._owner.columns()
            )
        if mine:
            self.taken.add(run.id)
        return mine

    async def _claim(self, run: RunRecord) -> bool:
        """Start the run if it is still pending and still this process's (compare-and-set):
        two workers can never both execute it."""
        return await self._store.update_run_if_owner(
            run.id,
            self._owner.executor_id,
            expected_status=RunStatus.PENDING,
            status=RunStatus.RUNNING,
            started_at=run.started_at or time.time(),
            finished_at=None,
            **self._owner.columns(),
        )

    async def _record_outcome(
        self, run_id: str, outcome: RunOutcome, emitter: RunEmitter
    ) -> dict[str, Any]:
        self._finishing.add(run_id)
        status = RunStatus.SUCCEEDED if outcome.succeeded else RunStatus.FAILED
        usage = outcome.usage.to_json()
        ended = time.time()
        update = {
            "status": status,
            "outputs": outcome.outputs,
            "error": outcome.error,
            "usage": usage,
            "finished_at": ended,
        }
        emitter.emit_final(
            "run_finished",
            owner=self._owner.executor_id,
            run_update=update,
            status=str(status),
            error=outcome.error,
            outputs=outcome.outputs,
            usage=usage,
        )
        await self._store.journal.commit()
        await release_run_holds(self._store, run_id, owner=self._owner.executor_id, ended=ended)
        return {"status": str(status)}

    async def _record_cancelled(self, run_id: str, emitter: RunEmitter) -> dict[str, Any]:
        self._finishing.add(run_id)
        # Cancelled before it was taken from the queue: take it, so the end is recorded.
        await self._store.update_run_if_owner(
            run_id, None, expected_status=RunStatus.PENDING, **self._owner.columns()
        )
        await record_cancelled(self._store, emitter, owner=self._owner.executor_id)
        return {"status": str(RunStatus.CANCELLED)}

    async def _record_interrupted(self, run_id: str, emitter: RunEmitter) -> None:
        update = {"status": RunStatus.INTERRUPTED, "owner": None, "auto_resume": self._auto_resume}
        ended = time.time()
        emitter.emit_final("run_interrupted", owner=self._owner.executor_id, run_update=update)
        await self._store.journal.commit()
        await release_run_holds(self._store, run_id, owner=self._owner.executor_id, ended=ended)


async def emitter_for(store: Store, bus: EventBus, run_id: str) -> RunEmitter:
    """An emitter continuing the run's sequence numbers after what is already stored."""
    await store.journal.commit()
    return RunEmitter(run_id, store, bus, last_seq=await store.last_seq(run_id))


async def record_cancelled(store: Store, emitter: RunEmitter, *, owner: str) -> None:
    """End the run as cancelled, releasing it; a no-op in the database if `owner` lost it."""
    ended = time.time()
    update = {"status": RunStatus.CANCELLED, "finished_at": ended, "owner": None}
    emitter.emit_final(
        "run_finished",
        owner=owner,
        run_update=update,
        status=str(RunStatus.CANCELLED),
        error="cancelled",
    )
    await store.journal.commit()
    await release_run_holds(store, emitter.run_id, owner=owner, ended=ended)


def _uncancel() -> None:
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()
