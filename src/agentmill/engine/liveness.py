"""Whether the process that owns a run is still alive (for resume and status display)."""

from __future__ import annotations

import os
import socket
import time

from agentmill.store import RunRecord, RunStatus

__all__ = ["owner_alive"]

HEARTBEAT_GRACE = 3.0
"""A run whose owner missed this many heartbeat intervals is taken as orphaned."""


def owner_alive(run: RunRecord, *, heartbeat_interval: float) -> bool:
    """True while another process may still be executing this run."""
    if run.status not in {RunStatus.RUNNING, RunStatus.PENDING} or run.owner is None:
        return False
    if run.owner_host == socket.gethostname() and run.owner_pid is not None:
        if run.owner_pid == os.getpid():
            return True
        if not _pid_alive(run.owner_pid):
            return False
    beat = run.heartbeat_at or 0.0
    return time.time() - beat < HEARTBEAT_GRACE * heartbeat_interval


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
