"""`Escapes` on a kernel that does not list children in /proc (no CONFIG_PROC_CHILDREN):
the call's tree is still found, with one read of /proc per scan, not one per process."""

from __future__ import annotations

import asyncio
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


def test_a_pid_reused_after_its_check_is_never_signalled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pid P named the recorded process (`old`) when it was checked, and an unrelated one
    (`new`) right after: the kernel's pid table is played by a fake that hands P to `new`
    at that moment. Ending the call must not signal `new`."""
    old = subprocess.Popen(["sleep", "600"])
    new = _started_after(old)
    try:
        old_start = reap.start_time(old.pid)
        assert old_start is not None
        _play_pid_reuse(monkeypatch, old=old.pid, new=new.pid)
        found = Escapes(old.pid, identity=None)
        found._known[new.pid] = old_start  # pyright: ignore[reportPrivateUsage]
        asyncio.run(found.end(grace=5.0))
    finally:
        for process in (old, new):
            process.kill()
            process.wait()
    # Signalled by the call, it died of SIGTERM (-15) or was reaped by it (0 left to us).
    assert new.returncode == -signal.SIGKILL, f"the new process was signalled: {new.returncode}"


def _started_after(old: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
    """A process started at a later clock tick than `old` (start times are in ticks)."""
    while True:
        new = subprocess.Popen(["sleep", "600"])
        if reap.start_time(new.pid) != reap.start_time(old.pid):
            return new
        new.kill()
        new.wait()


def _play_pid_reuse(monkeypatch: pytest.MonkeyPatch, *, old: int, new: int) -> None:
    """Pid `new` names process `old` until /proc is read for that pid's state, and
    process `new` from then on (start time and pidfd alike)."""
    reused = False
    start_time, read_member, pidfd_open = reap.start_time, reap.read_member, os.pidfd_open

    def fake_start_time(pid: int) -> int | None:
        return start_time(old if pid == new and not reused else pid)

    def fake_read_member(pid: int) -> reap.Member | None:
        nonlocal reused
        reused = reused or pid == new
        return read_member(pid)

    def fake_pidfd_open(pid: int, flags: int = 0) -> int:
        return pidfd_open(old if pid == new and not reused else pid, flags)

    monkeypatch.setattr(reap, "start_time", fake_start_time)
    monkeypatch.setattr(reap, "read_member", fake_read_member)
    monkeypatch.setattr(os, "pidfd_open", fake_pidfd_open)


def test_a_signal_checked_before_a_pid_reuse_reaches_only_the_checked_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pid P is handed from `old` to `new` right after its start time is checked: the
    signal that follows the check goes to `old`, the process the pidfd was opened on."""
    old = subprocess.Popen(["sleep", "600"])
    new = _started_after(old)
    try:
        old_start = reap.start_time(old.pid)
        assert old_start is not None
        reused = False
        start_time, pidfd_open = reap.start_time, os.pidfd_open

        def fake_start_time(pid: int) -> int | None:
            nonlocal reused
            found = start_time(old.pid if pid == new.pid and not reused else pid)
            reused = reused or pid == new.pid
            return found

        def fake_pidfd_open(pid: int, flags: int = 0) -> int:
            return pidfd_open(old.pid if pid == new.pid and not reused else pid, flags)

        monkeypatch.setattr(reap, "start_time", fake_start_time)
        monkeypatch.setattr(os, "pidfd_open", fake_pidfd_open)
        reap.signal_process(new.pid, old_start, signal.SIGTERM)
    finally:
        for process in (old, new):
            process.kill()
            process.wait()
    assert (old.returncode, new.returncode) == (-signal.SIGTERM, -signal.SIGKILL)
