"""The processes of an attempt whose worker died: found again and ended before a retry.

A worker killed with SIGKILL cannot stop its tool, which lives in a session of its own and
keeps working in the step's worktree. Before the next attempt runs there, what is left of
that session is ended. The session is named by its leader's pid, host and start time, so a
pid reused by an unrelated process is never touched.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Any

from agentmill.agents.cli import reap

__all__ = ["end_leftovers", "session_record"]


def session_record(pid: int) -> dict[str, Any]:
    """What identifies the session a child leads, for `end_leftovers` after a crash."""
    return {"sid": pid, "host": socket.gethostname(), "start": reap.start_time(pid)}


async def end_leftovers(record: Mapping[str, Any] | None, *, grace: float) -> bool:
    """End the processes still alive in a recorded session; whether any were found."""
    if not record or record.get("host") != socket.gethostname():
        return False
    sid = record.get("sid")
    if not isinstance(sid, int) or not reap.session_members(sid):
        return False
    leader_start = reap.start_time(sid)
    if leader_start is not None and leader_start != record.get("start"):
        return False  # the pid is another process's now
    return await reap.end_session(sid, leader=sid, grace=grace)
