"""Adopting the runs of workers that died or shut down (server workers only).

DBOS recovers only its own executor's workflows at start-up, and every agentmill process
has its own executor id, so nothing else would continue a dead worker's runs. Every
server worker sweeps periodically; on PostgreSQL an advisory lock lets one sweep at a
time, and each adoption is a compare-and-set on the run's owner, so a run is adopted once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from agentmill.engine.liveness import HEARTBEAT_GRACE

if TYPE_CHECKING:
    from agentmill.engine.engine import Engine

__all__ = ["recover_forever", "sweep"]

logger = logging.getLogger("agentmill.engine")

_LOST_AFTER = 30.0
"""A run waiting this long for a worker without being in the queue is lost."""


async def sweep(engine: Engine) -> list[str]:
    """Adopt every run whose worker's heartbeat stopped, or that a shutdown handed back."""
    store = engine.store
    stale_before = time.time() - HEARTBEAT_GRACE * engine.settings.heartbeat_interval
    adopted: list[str] = []
    async with store.exclusive("agentmill.recovery") as mine:
        if not mine:
            return adopted
        for run in await store.recoverable_runs(stale_before=stale_before):
            if engine.executes(run.id):
                continue  # this process heartbeats its own runs; a stale one is finishing
            if await engine.adopt(run):
                adopted.append(run.id)
        adopted += await _requeue_lost(engine)
    return adopted


async def _requeue_lost(engine: Engine) -> list[str]:
    """Runs waiting for a worker (pending, no owner) whose DBOS workflow is not in the
    queue: the process died between recording the run and queueing it, or after a worker
    dequeued it and before it took it. Queue them again; taking a run is a
    compare-and-set, so a slow worker and the new one cannot both execute it."""
    from agentmill.engine.runtime import workflow_enqueued

    lost: list[str] = []
    for run in await engine.store.queued_before(time.time() - _LOST_AFTER):
        if not await workflow_enqueued(run.workflow_id or run.id) and await engine.adopt(run):
            lost.append(run.id)
    return lost


async def recover_forever(engine: Engine) -> None:
    """Sweep at start-up, then every two heartbeat intervals."""
    while True:
        try:
            await sweep(engine)
        except Exception as exc:  # noqa: BLE001 - a database hiccup must not stop recovery
            logger.warning("recovery sweep failed, will retry: %s", exc)
        await asyncio.sleep(2 * engine.settings.heartbeat_interval)
