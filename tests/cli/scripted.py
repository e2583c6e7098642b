"""Running the real `agentmill` CLI through a fixture script that scripts its models
(tests/fixtures/*_cli.py), and waiting for what it logs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.cli.conftest import Cli

FIXTURES = Path(__file__).parents[1] / "fixtures"


def command(fixture: str, *args: str) -> list[str]:
    return [sys.executable, str(FIXTURES / fixture), *args]


def start(cli: Cli, fixture: str, *args: str) -> subprocess.Popen[str]:
    """The CLI running in the background, in a session of its own (to kill it whole)."""
    return subprocess.Popen(
        command(fixture, *args),
        cwd=cli.cwd,
        env=cli.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def run(cli: Cli, fixture: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(fixture, *args),
        cwd=cli.cwd,
        env=cli.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def kill_9(process: subprocess.Popen[str]) -> None:
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


def wait_for(cli: Cli, line_start: str, timeout: float = 60) -> None:
    """Until a line of the call log starts with `line_start`."""
    deadline = time.monotonic() + timeout
    while not any(line.startswith(line_start) for line in cli.calls()):
        assert time.monotonic() < deadline, f"no {line_start!r} in {cli.calls()}"
        time.sleep(0.05)
