"""DBOS, kept in one place: launch and destroy, the queue, and the one generic workflow.

DBOS is process-global, so the engine running in this process registers itself here
while it is started; the workflow function looks it up to do its work.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import uuid
from typing import TYPE_CHECKING, Any

from dbos import DBOS, DBOSConfig, Queue
from dbos._serialization import Serializer

from agentmill import ENGINE_VERSION
from agentmill.errors import InvalidStateError
from agentmill.settings import Settings
from agentmill.store.db import sync_url

if TYPE_CHECKING:
    from agentmill.engine.engine import Engine

__all__ = ["RUN_QUEUE", "agentmill_run", "destroy_dbos", "launch_dbos", "new_executor_id"]

RUN_QUEUE = "agentmill-runs"
logger = logging.getLogger("agentmill.engine")

_engines: list[Engine] = []


class JsonSerializer(Serializer):
    """Everything agentmill hands to DBOS is JSON, never pickle."""

    def serialize(self, data: Any) -> str:
        return json.dumps(data)

    def deserialize(self, serialized_data: str) -> Any:
        return json.loads(serialized_data)

    def name(self) -> str:
        return "agentmill_json"


@DBOS.workflow(name="agentmill.run")
async def agentmill_run(run_id: str) -> dict[str, Any]:
    """The one durable workflow: interpret the plan snapshot stored with the run."""
    if not _engines:
        raise InvalidStateError("no agentmill engine is running in this process")
    return await _engines[-1].execute_run(run_id)


def new_executor_id() -> str:
    """Unique per process: two processes sharing an id would re-run each other's work."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def _config(settings: Settings, executor_id: str) -> DBOSConfig:
    return {
        "name": "agentmill",
        "system_database_url": sync_url(settings.resolved_database_url),
        "application_version": ENGINE_VERSION,
        "executor_id": executor_id,
        "max_executor_threads": settings.max_executor_threads,
        "serializer": JsonSerializer(),
        "log_level": settings.log_level,
        "notification_listener_polling_interval_sec": 0.05,
    }


async def launch_dbos(settings: Settings, executor_id: str, engine: Engine) -> Queue:
    """Launch DBOS in this loop and register the run queue."""
    DBOS(config=_config(settings, executor_id))
    _engines.append(engine)
    DBOS.launch()
    return await DBOS.register_queue_async(
        RUN_QUEUE,
        worker_concurrency=settings.worker_concurrency,
        polling_interval_sec=settings.queue_polling_interval,
    )


def destroy_dbos(engine: Engine) -> None:
    if engine in _engines:
        _engines.remove(engine)
    DBOS.destroy(destroy_registry=False)
