"""DBOS, kept in one place: launch and destroy, and the one generic workflow.

DBOS is process-global, so the executor of the engine running in this process registers
itself here while it is started; the workflow function looks it up to do its work.
An embedded engine starts its runs' workflows directly in its own process (no shared
queue), so two `agentmill` processes never execute, or interrupt, each other's runs.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from dbos import DBOS, DBOSConfig, Queue, SetWorkflowID
from dbos._serialization import Serializer

from agentmill import ENGINE_VERSION
from agentmill.errors import InvalidStateError
from agentmill.settings import Settings
from agentmill.store.db import sync_url

if TYPE_CHECKING:
    from agentmill.engine.execution import RunExecutor

__all__ = [
    "RUN_QUEUE",
    "agentmill_run",
    "cancel_stale_workflow",
    "destroy_dbos",
    "enqueue_run_workflow",
    "launch_dbos",
    "register_run_queue",
    "start_run_workflow",
    "workflow_enqueued",
]

logger = logging.getLogger("agentmill.engine")

_executors: list[RunExecutor] = []

RUN_QUEUE = "agentmill-runs"
"""The shared queue of server mode; only `agentmill serve` workers listen to it."""
_QUEUE_POLL = 0.05
_queues: dict[str, Queue] = {}


class JsonSerializer(Serializer):
    """Everything agentmill hands to DBOS is JSON, never pickle."""

    def serialize(self, data: Any) -> str:
        if isinstance(data, BaseException):
            return json.dumps({"__error__": type(data).__name__, "message": str(data)})
        return json.dumps(data)

    def deserialize(self, serialized_data: str) -> Any:
        data = json.loads(serialized_data)
        if isinstance(data, dict) and "__error__" in data:
            return RuntimeError(f"{data['__error__']}: {data.get('message', '')}")
        return data

    def name(self) -> str:
        return "agentmill_json"


@DBOS.workflow(name="agentmill.run")
async def agentmill_run(run_id: str) -> dict[str, Any]:
    """The one durable workflow: interpret the plan snapshot stored with the run."""
    if not _executors:
        raise InvalidStateError("no agentmill engine is running in this process")
    return await _executors[-1].execute(run_id)


async def start_run_workflow(run_id: str, workflow_id: str) -> None:
    """Start the run's workflow in this process under a given DBOS workflow id."""
    with SetWorkflowID(workflow_id):
        await DBOS.start_workflow_async(agentmill_run, run_id)


async def register_run_queue(worker_concurrency: int | None, *, update: bool) -> None:
    """Declare the shared run queue; a worker sets how many runs it takes at once."""
    _queues.clear()
    _queues[RUN_QUEUE] = await DBOS.register_queue_async(
        RUN_QUEUE,
        worker_concurrency=worker_concurrency,
        polling_interval_sec=_QUEUE_POLL,
        on_conflict="always_update" if update else "never_update",
    )


async def enqueue_run_workflow(run_id: str, workflow_id: str) -> None:
    """Queue the run's workflow for whichever server worker is free."""
    queue = _queues.get(RUN_QUEUE)
    if queue is None:
        raise InvalidStateError("the run queue is not registered; start the engine in server mode")
    with SetWorkflowID(workflow_id):
        await queue.enqueue_async(agentmill_run, run_id)


async def workflow_enqueued(workflow_id: str) -> bool:
    """Whether the workflow waits in a queue for a worker."""
    status = await DBOS.get_workflow_status_async(workflow_id)
    return status is not None and status.status == "ENQUEUED"


async def cancel_stale_workflow(workflow_id: str) -> None:
    """Mark an execution that will never finish (its process died) as cancelled in DBOS."""
    status = await DBOS.get_workflow_status_async(workflow_id)
    if status is not None and status.status in {"PENDING", "ENQUEUED"}:
        await DBOS.cancel_workflow_async(workflow_id)


RECHECK_MESSAGES_EVERY = 5.0
"""Seconds between DBOS's database re-checks of a waiting `recv` (DBOS: 60). A NOTIFY sent
while DBOS's listener connection is being re-opened (the database restarted, or backends
were terminated) is lost; the re-check is what then delivers an approval's wake-up. One
indexed read per waiting gate every 5 s."""


def _config(settings: Settings, executor_id: str) -> DBOSConfig:
    return {
        "name": "agentmill",
        "system_database_url": sync_url(settings.resolved_database_url),
        "application_version": ENGINE_VERSION,
        "executor_id": executor_id,
        "max_executor_threads": settings.max_executor_threads,
        "serializer": JsonSerializer(),
        # DBOS warns on every interrupted task; agentmill reports interruptions itself.
        "log_level": "ERROR" if settings.log_level.upper() == "WARNING" else settings.log_level,
        "notification_listener_polling_interval_sec": 0.05,
    }


def launch_dbos(
    settings: Settings, executor_id: str, executor: RunExecutor, *, listen: bool = False
) -> None:
    """Launch DBOS (call from inside the running event loop).

    Only server workers (`listen`) dequeue from the shared run queue: any other process,
    such as a CLI command, would take a server's runs and interrupt them when it exits.
    """
    dbos = DBOS(config=_config(settings, executor_id))
    DBOS.listen_queues([RUN_QUEUE] if listen else [])
    _executors.append(executor)
    DBOS.launch()
    dbos._sys_db._notification_fallback_polling_interval = RECHECK_MESSAGES_EVERY


def destroy_dbos(executor: RunExecutor | None) -> None:
    if executor in _executors:
        _executors.remove(executor)
    _queues.clear()
    DBOS.destroy(destroy_registry=False)


# approval gates: the row in am_approvals is the truth; these messages only wake the gate


async def recv_decision(topic: str, seconds: float) -> Any:
    """Inside a run's workflow: wait up to `seconds` for a message on `topic`.

    Returns the message, or None on timeout. Holds no thread while waiting, and is safe
    to cancel (the run being interrupted or cancelled).
    """
    return await DBOS.recv_async(topic, timeout_seconds=seconds)


async def send_decision(workflow_id: str, topic: str, message: dict[str, Any]) -> None:
    """Wake a gate waiting in the workflow `workflow_id` (DBOS must be launched here)."""
    await DBOS.send_async(workflow_id, message, topic)
