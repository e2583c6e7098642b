"""Finding, killing and reaping every process of one child's session.

A command-line agent is started as the leader of a new session (and process group). Its
descendants stay in that session even when they move to another process group with
`setpgid`, so the session id - the leader's pid - names everything the step started; only
a deliberate `setsid()` escapes it. Members are found with one `getsid(2)` per pid listed
in /proc (about 0.3 ms for 100 processes); /proc/PID/stat, ten times dearer to read, is
read only for members, for their state and parent.

Reaping: the worker makes itself a child subreaper (Linux `prctl`), so a member orphaned by
its parent's death is re-parented to the worker instead of init, and once dead is collected
here with a targeted `waitpid(pid, WNOHANG)`. Never `waitpid(-1)`: the leader, and every
other child of the worker, belong to asyncio's child watcher.

Without /proc (not Linux) only the process group is signalled and nothing is scanned.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import sys
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass

__all__ = [
    "Member",
    "become_subreaper",
    "children_by_parent",
    "count_session",
    "end_session",
    "has_proc",
    "read_member",
    "session_members",
    "session_pids",
    "signal_process",
    "start_time",
]

_PR_SET_CHILD_SUBREAPER = 36
_POLL = 0.02  # between scans while waiting for members to die
_SETTLE = 1.0  # how long zombies re-parented to another reaper may take to be collected
_KILL_BOUND = 10.0  # SIGKILL cannot fail but for a process we may not signal (setuid)

logger = logging.getLogger("agentmill.agents.cli")


@dataclass(frozen=True, kw_only=True)
class Member:
    """One process of a session, as /proc showed it."""

    pid: int
    ppid: int
    zombie: bool
    start: int
    """Start time in clock ticks since boot: with the pid, which process this is."""


@functools.cache
def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (once; Linux only).

    Without it a grandchild whose parent was killed is re-parented to init, out of reach;
    with it, it becomes our child, so `end_session` can wait for it and reap it.
    """
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


@functools.cache
def has_proc() -> bool:
    """Whether processes can be listed through /proc (Linux)."""
    return os.path.isdir("/proc/self")


def _pids() -> list[int]:
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    return [int(name) for name in names if name.isdigit()]


def children_by_parent() -> dict[int, list[int]]:
    """Every process's children, by parent pid, from one read of every /proc/PID/stat
    (for a kernel that does not list children in /proc/PID/task/TID/children)."""
    by_parent: dict[int, list[int]] = {}
    for member in (read_member(pid) for pid in _pids()):
        if member is not None:
            by_parent.setdefault(member.ppid, []).append(member.pid)
    return by_parent


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22)."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields is not None else None


def _stat_fields(pid: int) -> list[bytes] | None:
    """/proc/PID/stat after the command name: state, ppid, pgrp, session ... (or None)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            data = file.read()
    except OSError:
        return None
    # "pid (comm) state ppid pgrp session ...": comm may hold spaces and parentheses.
    return data.rpartition(b")")[2].split()


def session_pids(sid: int) -> list[int]:
    """The pids of session `sid` (zombies included): one `getsid` per pid in /proc."""
    pids: list[int] = []
    for pid in _pids():
        try:
            if os.getsid(pid) == sid:
                pids.append(pid)
        except OSError:
            continue
    return pids


def count_session(sid: int) -> int:
    """How many processes (zombies included, as RLIMIT_NPROC counts them) the session holds."""
    return len(session_pids(sid))


def read_member(pid: int) -> Member | None:
    """The process `pid` as /proc shows it now, or None when it is gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    zombie = fields[0] in (b"Z", b"X")
    return Member(pid=pid, ppid=int(fields[1]), zombie=zombie, start=int(fields[19]))


def session_members(sid: int) -> list[Member]:
    """Every process whose session id is `sid`, zombies included."""
    members = (read_member(pid) for pid in session_pids(sid))
    return [member for member in members if member is not None]


def _reap(members: list[Member], leader: int) -> None:
    me = os.getpid()
    for member in members:
        if member.zombie and member.ppid == me and member.pid != leader:
            with suppress(ChildProcessError):
                os.waitpid(member.pid, os.WNOHANG)


@dataclass(frozen=True, kw_only=True)
class _Scan:
    live: list[int]
    zombies: int  # left for another parent to reap; ours are reaped by the scan


def _scan(sid: int, leader: int) -> _Scan:
    if not has_proc():
        try:
            os.killpg(sid, 0)
        except (ProcessLookupError, PermissionError):
            return _Scan(live=[], zombies=0)
        return _Scan(live=[leader], zombies=0)
    members = session_members(sid)
    _reap(members, leader)
    me = os.getpid()
    live = [member.pid for member in members if not member.zombie]
    zombies = sum(1 for m in members if m.zombie and m.ppid != me and m.pid != leader)
    return _Scan(live=live, zombies=zombies)


def _signal(sid: int, pids: list[int], signum: int) -> None:
    """Signal the group (atomic in the kernel, so a forking member cannot outrun it), then
    each member found in the session, which catches those that changed process group."""
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(sid, signum)
    for pid in pids:
        _signal_if(pid, functools.partial(_in_session, pid, sid), signum)


def _in_session(pid: int, sid: int) -> bool:
    try:
        return os.getsid(pid) == sid
    except OSError:
        return False


def signal_process(pid: int, start: int, signum: int) -> None:
    """Signal `pid` only if it is still the process that started at `start` (clock ticks)."""
    _signal_if(pid, lambda: start_time(pid) == start, signum)


def _signal_if(pid: int, same: Callable[[], bool], signum: int) -> None:
    """Signal `pid` if `same()` holds, checked while a pidfd names the process: a pidfd
    names only the process it was opened on, so a pid reused after the check is not hit."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except (OSError, AttributeError):  # no pidfd (not Linux, or < 5.3): check, then kill
        if same():
            with suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signum)
        return
    try:
        if same():
            with suppress(ProcessLookupError, PermissionError):
                signal.pidfd_send_signal(fd, signum)
    finally:
        os.close(fd)


async def end_session(sid: int, *, leader: int, grace: float) -> bool:
    """End every process of session `sid`: SIGTERM, up to `grace` seconds, then SIGKILL until
    none is left; reap those re-parented to us. Returns whether any process was signalled.

    Returns at once, having signalled nothing, when the session is already empty.
    """
    loop = asyncio.get_running_loop()
    scan = _scan(sid, leader)
    if not scan.live and not scan.zombies:
        return False
    signalled = bool(scan.live)
    if scan.live:
        _signal(sid, scan.live, signal.SIGTERM)
        _signal(sid, scan.live, signal.SIGCONT)  # a stopped process must run to see SIGTERM
    kill_at = loop.time() + grace
    give_up_at = kill_at + _KILL_BOUND
    settle_until: float | None = None
    while scan.live or scan.zombies:
        await asyncio.sleep(_POLL)
        scan = _scan(sid, leader)
        now = loop.time()
        if scan.live and now >= kill_at:
            _signal(sid, scan.live, signal.SIGKILL)
        if scan.live and now >= give_up_at:
            logger.warning("processes %s of session %d survive SIGKILL", scan.live, sid)
            break
        if not scan.live:
            # Only zombies whose parent is not us are left (re-parenting in flight, or
            # another subreaper): give their new parent a moment, never forever.
            settle_until = settle_until if settle_until is not None else now + _SETTLE
            if now >= settle_until:
                break
    return signalled
