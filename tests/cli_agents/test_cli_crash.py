"""kill -9 of `agentmill run` during a command-line step, then `agentmill runs resume`."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.cli.conftest import Cli
from tests.cli_agents.gitrepo import make_repo
from tests.cli_agents.procs import marked, new_marker

CONFIG = """
agents:
  quick:
    runtime: cli
    preset: claude
    env: [PATH, CLAUDE_CODE_OAUTH_TOKEN, FAKE_CLI_LOG, FAKE_CLI_WRITE]
    repo: repo
  slow:
    runtime: cli
    preset: claude
    env: [PATH, CLAUDE_CODE_OAUTH_TOKEN, FAKE_CLI_LOG, FAKE_CLI_WRITE, FAKE_CLI_HANG_AFTER_INIT]
    repo: repo
    grace: 0.5s
workflows:
  w:
    steps:
      - {id: first, agent: quick, prompt: first}
      - {id: second, agent: slow, needs: [first], prompt: second}
"""


def _wait_for(check: Callable[[], bool], *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not reached within {timeout}s"
        time.sleep(0.05)


def _saved_session(cli: Cli, run_id: str) -> str | None:
    details = _steps(cli, run_id)["second"].get("details") or {}
    return (details.get("saved") or {}).get("session_id")


def _invocations(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def _steps(cli: Cli, run_id: str) -> dict[str, dict[str, Any]]:
    shown = cli.run("runs", "show", run_id, "--json")
    assert shown.returncode == 0, shown.stderr
    return {step["key"]: step for step in json.loads(shown.stdout)["steps"]}


def _only_run_id(cli: Cli) -> str:
    listed = cli.run("runs", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    (run,) = json.loads(listed.stdout)
    return str(run["run_id"])


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rpartition(b")")[2].split()[0] not in (b"Z", b"X")
    except OSError:
        return False


def test_kill_9_during_a_cli_step_then_resume_reuses_the_session_and_the_worktree(
    cli: Cli, fake_bin: Path
) -> None:
    make_repo(cli.cwd / "repo")
    (cli.cwd / "agentmill.yaml").write_text(CONFIG)
    log = cli.cwd / "tools.jsonl"
    cli.env.update(
        PATH=f"{fake_bin}:{Path(sys.executable).parent}:/usr/bin:/bin",
        FAKE_CLI_LOG=str(log),
        FAKE_CLI_WRITE="notes.txt",
        FAKE_CLI_HANG_AFTER_INIT="1",
        CLAUDE_CODE_OAUTH_TOKEN="test-oauth-token-0123456789",  # the preset checks for one
    )
    process = cli.start("run", "agentmill.yaml", "w")
    _wait_for(lambda: len(_invocations(log)) >= 2, timeout=60)
    run_id = _only_run_id(cli)
    _wait_for(lambda: _saved_session(cli, run_id) is not None, timeout=30)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)
    hung = _invocations(log)[1]
    assert _alive(hung["pid"])  # the worker died; its tool is still running
    try:
        _resume_and_check(cli, run_id, log, hung)
    finally:
        if _alive(hung["pid"]):
            os.kill(hung["pid"], signal.SIGKILL)


def _resume_and_check(cli: Cli, run_id: str, log: Path, hung: dict[str, Any]) -> None:
    session = _saved_session(cli, run_id)

    cli.env["FAKE_CLI_HANG_AFTER_INIT"] = "0"
    resumed = cli.run("runs", "resume", run_id, "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["status"] == "succeeded"

    calls = _invocations(log)
    assert [call["prompt"] for call in calls] == ["first", "second", "second"]
    assert calls[2]["resumed"] == session
    assert calls[2]["cwd"] == calls[1]["cwd"]  # the same worktree, with its files
    assert not _alive(hung["pid"])  # the interrupted attempt's process was ended first
    steps = _steps(cli, run_id)
    assert steps["second"]["details"]["cli"]["session_id"] == session
    assert steps["second"]["details"]["diff"]["files"] == ["notes.txt"]


def test_ctrl_c_during_a_cli_step_ends_the_tool_and_the_run_can_resume(cli: Cli) -> None:
    marker = new_marker()
    hang = Path(__file__).resolve().parents[1] / "fixtures" / "fake_cli" / "hang.py"
    (cli.cwd / "agentmill.yaml").write_text(f"""
agents:
  stuck:
    runtime: cli
    command: ["{sys.executable}", "{hang}", "--marker={marker}"]
    workdir: .
    grace: 0.5s
workflows:
  w:
    steps:
      - {{id: s, agent: stuck, prompt: go}}
""")
    process = cli.start("run", "agentmill.yaml", "w")
    _wait_for(lambda: bool(marked(marker)), timeout=60)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert marked(marker) == []  # the tool's whole session ended with the worker
    run_id = _only_run_id(cli)
    shown = json.loads(cli.run("runs", "show", run_id, "--json").stdout)
    assert shown["status"] == "interrupted"
