"""kill -9 and Ctrl-C in the middle of `agentmill run`, then `agentmill runs resume`."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from pathlib import Path

from tests.cli.conftest import Cli

WORKFLOW = """
version: 1
models: {default: openai:gpt-4o}
agents:
  a: {instructions: be brief}
workflows:
  chain:
    steps:
      - {id: s1, agent: a, prompt: "s1"}
      - {id: s2, agent: a, needs: [s1], prompt: "s2 after {{ steps.s1.output }}"}
      - {id: s3, agent: a, needs: [s1], prompt: "s3 after {{ steps.s1.output }}"}
      - {id: s4, agent: a, needs: [s2, s3], prompt: "s4"}
      - {id: s5, agent: a, needs: [s4], prompt: "s5"}
      - {id: s6, agent: a, needs: [s5], prompt: "s6"}
"""
ALL_PROMPTS = {"s1", "s2 after done s1", "s3 after done s1", "s4", "s5", "s6"}


def _write_config(cli: Cli) -> Path:
    path = cli.cwd / "agentmill.yaml"
    path.write_text(WORKFLOW)
    return path


def _wait_for_calls(cli: Cli, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while len(cli.calls()) < count:
        assert time.monotonic() < deadline, f"only {cli.calls()} after {timeout}s"
        time.sleep(0.05)


def _succeeded_steps(cli: Cli, run_id: str) -> set[str]:
    shown = cli.run("runs", "show", run_id, "--json")
    assert shown.returncode == 0, shown.stderr
    return {s["key"] for s in json.loads(shown.stdout)["steps"] if s["status"] == "succeeded"}


def _only_run_id(cli: Cli) -> str:
    listed = cli.run("runs", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    (run,) = json.loads(listed.stdout)
    return str(run["run_id"])


def test_kill_9_mid_run_then_resume_never_recalls_finished_steps(any_backend_cli: Cli) -> None:
    cli = any_backend_cli
    cli.env["AGENTMILL_TEST_LATENCY"] = "0.4"
    config = _write_config(cli)
    process = cli.start("run", str(config), "chain", recording=True)
    _wait_for_calls(cli, 4)  # s1, s2, s3 done or in flight; s4 started
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)
    assert process.returncode == -signal.SIGKILL

    run_id = _only_run_id(cli)
    finished_before = _succeeded_steps(cli, run_id)
    assert {"s1", "s2", "s3"} <= finished_before

    resumed = cli.run("runs", "resume", run_id, "--json", recording=True)
    assert resumed.returncode == 0, resumed.stderr
    result = json.loads(resumed.stdout)
    assert result["status"] == "succeeded"
    assert result["outputs"] == {"s6": "done s6"}

    counts = Counter(cli.calls())
    assert set(counts) == ALL_PROMPTS
    for key in finished_before:
        prompt = next(p for p in ALL_PROMPTS if p.split(" ")[0] == key)
        assert counts[prompt] == 1, f"{key} finished before the kill but was called again"
    assert all(n <= 2 for n in counts.values())


def test_ctrl_c_interrupts_with_exit_130_and_the_run_resumes(cli: Cli) -> None:
    cli.env["AGENTMILL_TEST_LATENCY"] = "0.4"
    config = _write_config(cli)
    process = cli.start("run", str(config), "chain", recording=True)
    _wait_for_calls(cli, 2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130, stderr
    run_id = _only_run_id(cli)
    assert f"agentmill runs resume {run_id}" in stderr
    assert "Traceback" not in stderr

    shown = json.loads(cli.run("runs", "show", run_id, "--json").stdout)
    assert shown["status"] == "interrupted"

    resumed = cli.run("runs", "resume", run_id, "--json", recording=True)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["status"] == "succeeded"
    assert Counter(cli.calls())["s1"] == 1
