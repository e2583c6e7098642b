"""`Escapes` on a kernel that does not list children in /proc (no CONFIG_PROC_CHILDREN):
the call's tree is still found, with one read of /proc per scan, not one per process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from agentmill.agents.cli import escapes, reap
from agentmill.agents.cli.escapes import Escapes

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc")

_CHILDREN = 8
_TREE = f"""
import os, sys, time
for _ in range({_CHILDREN}):
    if os.fork() == 0:
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
        time.sleep(60)
        os._exit(0)
print("ready", flush=True)
time.sleep(60)
"""


def test_a_scan_without_children_files_reads_proc_once(monkeypatch: pytest.MonkeyPatch) -> None:
    leader = subprocess.Popen(
        [sys.executable, "-c", _TREE], start_new_session=True, stdout=subprocess.PIPE
    )
    try:
        assert leader.stdout is not None
        assert leader.stdout.readline().strip() == b"ready"
        deadline = time.monotonic() + 10
        while len(reap.session_pids(leader.pid)) < 1 + 2 * _CHILDREN:
            assert time.monotonic() < deadline, "the tree did not start"
            time.sleep(0.02)
        monkeypatch.setattr(escapes, "_has_children_files", lambda: False)
        reads = 0
        read_member = reap.read_member

        def counted(pid: int) -> reap.Member | None:
            nonlocal reads
            reads += 1
            return read_member(pid)

        monkeypatch.setattr(reap, "read_member", counted)
        found = Escapes(leader.pid, identity=None)
        found.scan()
        assert len(found._known) == 2 * _CHILDREN  # pyright: ignore[reportPrivateUsage]
        processes = sum(name.isdigit() for name in os.listdir("/proc"))
        assert reads <= 2 * processes, f"{reads} reads of /proc/PID/stat for {processes} pids"
    finally:
        tree = reap.session_pids(leader.pid)
        os.killpg(leader.pid, signal.SIGKILL)
        leader.wait()
        _reap(tree)


def _reap(pids: list[int]) -> None:
    """Wait for the killed tree to be gone, reaping what is orphaned to this process (a
    child subreaper once any test ran a process)."""
    deadline = time.monotonic() + 10
    while pids and time.monotonic() < deadline:
        for pid in list(pids):
            member = reap.read_member(pid)
            if member is None:
                pids.remove(pid)
            elif member.zombie and member.ppid == os.getpid():
                os.waitpid(pid, 0)
        time.sleep(0.02)
