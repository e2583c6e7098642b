"""kill -9 of an `agentmill serve` worker mid-run: another worker adopts the run on its own."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import httpx

from tests.cli.conftest import Cli
from tests.servers import free_port, wait_ready

WORKFLOW = """
version: 1
models: {default: openai:gpt-4o}
agents:
  a: {instructions: be brief}
workflows:
  chain:
    steps:
      - {id: s1, agent: a, prompt: "s1"}
      - {id: s2, agent: a, needs: [s1], prompt: "s2"}
      - {id: s3, agent: a, needs: [s2], prompt: "s3"}
      - {id: s4, agent: a, needs: [s3], prompt: "s4"}
      - {id: s5, agent: a, needs: [s4], prompt: "s5"}
"""


def _serve(cli: Cli, config: Path) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    process = cli.start("serve", "--config", str(config), "--port", str(port), recording=True)
    url = f"http://127.0.0.1:{port}"
    wait_ready(process, url)
    return process, url


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def test_a_killed_workers_run_is_adopted_without_recalling_finished_steps(
    any_backend_cli: Cli,
) -> None:
    cli = any_backend_cli
    cli.env["AGENTMILL_TEST_LATENCY"] = "0.4"
    config = cli.cwd / "agentmill.yaml"
    config.write_text(WORKFLOW)
    key = cli.run("keys", "create", "--tenant", "acme", "--role", "operator").stdout.strip()
    headers = {"Authorization": f"Bearer {key}"}
    first, url = _serve(cli, config)
    second: subprocess.Popen[str] | None = None
    try:
        started = httpx.post(f"{url}/v1/runs", json={"workflow": "chain"}, headers=headers)
        assert started.status_code == 201, started.text
        run_id = started.json()["id"]
        deadline = time.monotonic() + 60
        while len(cli.calls()) < 3:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
        called_before_kill = cli.calls()
        second, url = _serve(cli, config)
        deadline = time.monotonic() + 90
        while (run := httpx.get(f"{url}/v1/runs/{run_id}", headers=headers).json())[
            "status"
        ] != "succeeded":
            assert run["status"] not in {"failed", "cancelled"}, run
            assert time.monotonic() < deadline, run
            time.sleep(0.1)
    finally:
        _stop(first)
        if second is not None:
            _stop(second)
    counts = Counter(cli.calls())
    assert set(counts) == {"s1", "s2", "s3", "s4", "s5"}
    # Steps that finished before the kill are never called again; only the one in
    # flight at the kill may run twice.
    interrupted = called_before_kill[-1]
    assert all(n == 1 for prompt, n in counts.items() if prompt != interrupted), counts
    assert counts[interrupted] <= 2
