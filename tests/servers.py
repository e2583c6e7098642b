"""Helpers for tests that run a real `agentmill serve` process."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from typing import Any

import httpx
import pytest

__all__ = ["free_port", "wait_ready"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_ready(process: subprocess.Popen[Any], url: str, timeout: float = 60) -> None:
    """Poll `/readyz` until the server answers 200; fail with its stderr if it exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            stderr = process.stderr.read() if process.stderr is not None else ""
            pytest.fail(f"serve exited with {process.returncode}: {stderr}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        time.sleep(0.05)
    pytest.fail(f"serve was not ready within {timeout}s")
