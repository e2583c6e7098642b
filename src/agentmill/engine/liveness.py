"""Whether the process that owns a run is still alive (for resume and status display), and
whether anything will continue a run on its own (for followers)."""

from __future__ import annotations

import os
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any

from agentmill.store import RunRecord, RunStatus

__all__ = ["Owner", "owner_alive", "run_settled"]

HEARTBEAT_GRACE = 3.0
"""A run whose owner missed this many heartbeat intervals is taken as orphaned."""


@dataclass(frozen=True)
class Owner:
    """This process, as recorded on the runs it submits and executes."""

    executor_id: str
    pid: int
    host: str

    @classmethod
    def of_this_process(cls, executor_id: str | None = None) -> Owner:
        host, pid = socket.gethostname(), os.getpid()
        return cls(executor_id or f"{host}-{pid}-{uuid.uuid4().hex[:6]}", pid, host)

    def columns(self) -> dict[str, Any]:
        return {
            "owner": self.executor_id,
            "owner_pid": self.pid,
            "owner_host": self.host,
            "heartbeat_at": time.time(),
        }


def owner_alive(run: RunRecord, *, heartbeat_interval: float) -> bool:
    """True while another process may still be executing this run."""
    if run.status not in {RunStatus.RUNNING, RunStatus.PENDING} or run.owner is None:
        return False
    same_host = run.owner_host == socket.gethostname() and run.owner_pid is not None
    if same_host and run.owner_pid != os.getpid() and not _pid_alive(run.owner_pid or 0):
        return False
    beat = run.heartbeat_at or 0.0
    return time.time() - beat < HEARTBEAT_GRACE * heartbeat_interval


def run_settled(run: RunRecord, *, heartbeat_interval: float) -> bool:
    """True when nothing will move the run on unless someone asks (`runs resume`).

    Finished runs are settled. A run of an `agentmill serve` worker is not while it waits
    for a worker, executes, or lost its worker (dead or shut down): a live worker adopts it
    (engine/recovery.py). Any other interrupted run, or one whose process is gone, is.
    """
    if run.status.finished:
        return True
    if run.status is RunStatus.INTERRUPTED:
        return not (run.served and run.auto_resume)
    if run.served:
        return False
    return not owner_alive(run, heartbeat_interval=heartbeat_interval)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
