"""Helpers for process tests: find the processes a test started, by marker or by session.

A zombie's /proc/PID/cmdline is empty, so zombies are found by session id (kept until
they are reaped) or by parent, never by marker. Written apart from `reap` on purpose: the
tests must not trust the code under test to find what it left behind.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

__all__ = ["Proc", "marked", "new_marker", "processes", "session", "until", "zombie_children"]


@dataclass(frozen=True, kw_only=True)
class Proc:
    pid: int
    ppid: int
    sid: int
    state: str
    cmdline: str


def _read(pid: int) -> Proc | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            stat = file.read()
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            cmdline = file.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None
    fields = stat.rpartition(b")")[2].split()
    return Proc(
        pid=pid,
        state=fields[0].decode(),
        ppid=int(fields[1]),
        sid=int(fields[3]),
        cmdline=cmdline,
    )


def processes() -> Iterator[Proc]:
    """Every process on the machine, as /proc shows it now."""
    for name in os.listdir("/proc"):
        if name.isdigit() and (proc := _read(int(name))) is not None:
            yield proc


def new_marker() -> str:
    """A marker for the command lines of one test's processes, unique across test sessions
    (the whole suite may run twice at once on one machine)."""
    return f"marker-{uuid.uuid4().hex}"


def marked(marker: str) -> list[Proc]:
    """Live processes whose command line carries `marker`."""
    return [p for p in processes() if marker in p.cmdline and p.state not in "ZX"]


def session(sid: int) -> list[Proc]:
    """Every process of session `sid`, zombies included."""
    return [p for p in processes() if p.sid == sid]


def zombie_children() -> list[Proc]:
    """Zombies whose parent is this process (the test runner)."""
    me = os.getpid()
    return [p for p in processes() if p.ppid == me and p.state == "Z"]


async def until(check: Callable[[], bool], *, within: float = 10.0) -> None:
    """Wait until `check()` is true; fail after `within` seconds."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within} s")
        await asyncio.sleep(0.01)
