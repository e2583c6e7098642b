"""The processes of a call that left its session (`setsid()`): found, ended and reaped.

A call's tool leads a session of its own, and `reap.end_session` ends every member of it.
A descendant that calls `setsid()` is no member any more. While the call runs, `Escapes`
records it two ways:

- by ancestry: every descendant of the leader, of the session's members and of what was
  recorded before, walked through /proc/PID/task/TID/children (pid and start time, so a
  reused pid is never taken for it);
- by identity: a child of the worker (the child subreaper, so orphans come back to it)
  whose environment carries the call's own identity variable
  (`AGENTMILL_IDEMPOTENCY_KEY=<run>:<step>`), which the tool's processes inherit.

After the session is ended, `end` signals what was recorded and is still alive (SIGTERM,
grace, SIGKILL) and reaps those re-parented to the worker, with targeted `waitpid` calls:
never the leader, never a pid it did not record. Each signal goes through a pidfd opened
before the start time is checked (`reap.signal_process`), so a pid reused after the check
is never signalled.

What this cannot see: a process that is orphaned and drops the identity from its
environment before a scan sees it in the tree (scans run every `SCAN_EVERY` seconds and
once when the leader exits), and one that dies as a zombie of the worker before any scan.
A cgroup would hold them all; it needs a delegated, writable cgroup v2 tree and a way to
start the child inside it (`clone3(CLONE_INTO_CGROUP)`), which Python 3.11 does not offer.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
from collections.abc import Callable, Iterable, Mapping
from contextlib import suppress

from agentmill.agents.cli import reap

__all__ = ["SCAN_EVERY", "Escapes", "identity_entry"]

SCAN_EVERY = 0.25
"""Seconds between two scans while the call runs."""
_POLL = 0.02
_SETTLE = 1.0
_KILL_BOUND = 10.0

logger = logging.getLogger("agentmill.agents.cli")


class Escapes:
    """The processes of one call outside its session, recorded while it runs."""

    def __init__(self, leader: int, *, identity: str | None) -> None:
        self._leader = leader
        self._identity = identity.encode() if identity else None
        self._known: dict[int, int] = {}
        """pid -> start time of every process recorded as the call's."""
        self._strangers: set[tuple[int, int]] = set()
        """(pid, start time) of the worker's children already found not to be the call's."""

    def scan(self) -> None:
        """Record the call's processes: descendants of its session, its recorded processes
        and the leader; the worker's children carrying its identity."""
        if not reap.has_proc():
            return
        roots = {self._leader, *reap.session_pids(self._leader), *self._alive()}
        self._add(_descendants(roots))
        if self._identity is not None:
            self._adopt()

    async def end(self, *, grace: float) -> None:
        """End and reap every recorded process still alive (the session is ended already).

        Zombies whose parent is not the worker are waited for a moment: their parent is
        being ended too, and they come back to the worker to be reaped."""
        self.scan()
        running, zombies = self._split()
        if running:
            self._signal(running, signal.SIGTERM)
            self._signal(running, signal.SIGCONT)  # a stopped process must run to see SIGTERM
        loop = asyncio.get_running_loop()
        kill_at = loop.time() + grace
        give_up_at = kill_at + _KILL_BOUND
        settle_until: float | None = None
        while running or zombies:
            await asyncio.sleep(_POLL)
            self._add(_descendants(running))  # forked while dying
            running, zombies = self._split()
            now = loop.time()
            if running and now >= kill_at:
                self._signal(running, signal.SIGKILL)
            if now >= give_up_at:
                logger.warning("processes %s that left a call's session survive", running)
                return
            if not running:
                settle_until = settle_until if settle_until is not None else now + _SETTLE
                if now >= settle_until:
                    return

    def _split(self) -> tuple[list[int], list[int]]:
        """The recorded processes still running, and their zombies the worker could not
        reap (yet): it reaps those whose parent it is first."""
        running: list[int] = []
        zombies: list[int] = []
        me = os.getpid()
        for member in self._members():
            if not member.zombie:
                running.append(member.pid)
            elif member.ppid != me or not _reaped(member.pid):
                zombies.append(member.pid)
        return running, zombies

    def _add(self, found: Mapping[int, int]) -> None:
        """Record processes found as children (pid -> the parent it was listed under): the
        one /proc shows now is taken only if it is still that parent's child, or the
        worker's (orphaned since), so a pid reused since the listing is not recorded."""
        me = os.getpid()
        for pid, parent in found.items():
            if pid == self._leader or pid in self._known:
                continue
            member = reap.read_member(pid)
            if member is not None and member.ppid in (parent, me):
                self._known[pid] = member.start

    def _alive(self) -> list[int]:
        """Recorded processes that are still the same processes (zombies included)."""
        return [member.pid for member in self._members()]

    def _members(self) -> list[reap.Member]:
        """The recorded processes as /proc shows them, each checked to be the process
        recorded in the same read that gives its state; the others are forgotten."""
        found = [reap.read_member(pid) for pid in self._known]
        same = [m for m in found if m is not None and m.start == self._known[m.pid]]
        for pid in set(self._known) - {member.pid for member in same}:
            del self._known[pid]
        return same

    def _signal(self, pids: list[int], signum: int) -> None:
        """Signal recorded processes, each only if still the process recorded."""
        for pid in pids:
            start = self._known.get(pid)
            if start is not None:
                reap.signal_process(pid, start, signum)

    def _adopt(self) -> None:
        """Record the worker's children (orphans re-parented to it) that carry the
        identity: the start time read before the environment must still be the pid's after
        it, so the environment read is that process's."""
        for pid in _children_lister()(os.getpid()):
            start = reap.start_time(pid)
            if pid == self._leader or pid in self._known or start is None:
                continue
            if (pid, start) in self._strangers:
                continue
            if not self._carries_identity(pid):
                self._strangers.add((pid, start))
            elif reap.start_time(pid) == start:
                self._known[pid] = start

    def _carries_identity(self, pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/environ", "rb") as file:
                entries = file.read().split(b"\0")
        except OSError:
            return False
        return self._identity in entries


def _reaped(pid: int) -> bool:
    """Collect a zombie child of the worker that the call left; targeted, never -1."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True  # collected by someone else meanwhile
    return done == pid


def identity_entry(env: Mapping[str, str], name: str | None) -> str | None:
    """`NAME=value` for the identity variable `name` of `env`, if it is set there."""
    if name is None or name not in env:
        return None
    return f"{name}={env[name]}"


def _descendants(roots: Iterable[int]) -> dict[int, int]:
    """Every process below `roots` (not the roots themselves), with the parent it was
    listed under."""
    children = _children_lister()
    found: dict[int, int] = {}
    pending = list(roots)
    while pending:
        parent = pending.pop()
        for child in children(parent):
            if child not in found:
                found[child] = parent
                pending.append(child)
    return found


def _children_lister() -> Callable[[int], list[int]]:
    """How to list a process's children: its /proc/PID/task/TID/children files or, on a
    kernel without them, one read of every /proc/PID/stat for the whole walk (not one per
    process walked: that was a full scan of /proc per process, four times a second)."""
    if _has_children_files():
        return _children
    by_parent = reap.children_by_parent()
    return lambda pid: by_parent.get(pid, [])


def _children(pid: int) -> list[int]:
    """The children of every thread of `pid`, from /proc/PID/task/TID/children."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    children: list[int] = []
    for task in tasks:
        with suppress(OSError, ValueError), open(f"/proc/{pid}/task/{task}/children", "rb") as f:
            children.extend(int(child) for child in f.read().split())
    return children


@functools.cache
def _has_children_files() -> bool:
    """Whether the kernel lists children in /proc (CONFIG_PROC_CHILDREN)."""
    me = os.getpid()
    return os.path.exists(f"/proc/{me}/task/{me}/children")
