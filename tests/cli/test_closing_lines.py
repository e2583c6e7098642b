"""The last line about a run matches its status and names the command to go on."""

from __future__ import annotations

import io
import signal
import time

import pytest
from rich.console import Console

from agentmill.cli.report import closing_line
from agentmill.store import RunRecord, RunStatus
from tests.cli.conftest import Cli

SLOW = """
version: 1
models: {default: openai:gpt-4o}
agents:
  a: {instructions: brief}
workflows:
  w:
    steps:
      - {id: one, agent: a, prompt: "one"}
"""


def _text(markup: str) -> str:
    console = Console(record=True, width=40, file=io.StringIO())
    console.print(markup, soft_wrap=True)
    return console.export_text()


def _run(status: RunStatus) -> RunRecord:
    return RunRecord(
        id="r1",
        tenant="default",
        workflow="w",
        status=status,
        inputs={},
        outputs=None,
        error="step 'one' failed",
        snapshot={},
        config_path=None,
        usage={"input_tokens": 3, "output_tokens": 4},
        created_at=0.0,
        started_at=None,
        finished_at=None,
        owner=None,
        owner_pid=None,
        owner_host=None,
        heartbeat_at=None,
        cancel_requested=False,
    )


@pytest.mark.parametrize(
    ("status", "gone", "expected"),
    [
        (RunStatus.SUCCEEDED, False, "✔ run r1 succeeded (3 in / 4 out tokens)\n"),
        (
            RunStatus.FAILED,
            False,
            "✘ run r1 failed: step 'one' failed\n"
            "  retry the failed steps with: agentmill runs resume r1\n",
        ),
        (
            RunStatus.RUNNING,
            False,
            "… run r1 running\n  follow it with: agentmill runs logs --follow r1\n"
            "  stop it with: agentmill runs cancel r1\n",
        ),
        (
            RunStatus.PENDING,
            False,
            "… run r1 pending (waiting to start)\n"
            "  follow it with: agentmill runs logs --follow r1\n"
            "  stop it with: agentmill runs cancel r1\n",
        ),
        (
            RunStatus.RUNNING,
            True,
            "⏸ run r1 running, its process is gone\n  continue it with: agentmill runs resume r1\n",
        ),
        (
            RunStatus.INTERRUPTED,
            False,
            "⏸ run r1 interrupted\n  continue it with: agentmill runs resume r1\n",
        ),
        (
            RunStatus.CANCELLED,
            False,
            "■ run r1 cancelled\n  resume it with: agentmill runs resume r1\n",
        ),
    ],
)
def test_the_closing_line_of_each_status(status: RunStatus, gone: bool, expected: str) -> None:
    assert _text(closing_line(_run(status), process_gone=gone)) == expected


def _wait_for_a_call(cli: Cli) -> None:
    deadline = time.monotonic() + 60
    while not cli.calls():
        assert time.monotonic() < deadline, "the run never called its model"
        time.sleep(0.05)


def test_runs_show_logs_and_cancel_close_with_the_runs_real_status(cli: Cli) -> None:
    config = cli.cwd / "agentmill.yaml"
    config.write_text(SLOW)
    cli.env["AGENTMILL_TEST_LATENCY"] = "120"  # running until interrupted
    runner = cli.start("run", str(config), "w", recording=True)
    assert runner.stderr is not None
    started = next(line for line in runner.stderr if line.startswith("run "))
    run_id = started.split()[1]  # run ID started (w)
    _wait_for_a_call(cli)

    running = cli.run("runs", "show", run_id)
    assert f"… run {run_id} running\n" in running.stderr
    assert f"  follow it with: agentmill runs logs --follow {run_id}\n" in running.stderr
    assert "retry" not in running.stderr

    runner.send_signal(signal.SIGINT)
    _, stderr = runner.communicate(timeout=60)
    assert runner.returncode == 130, stderr
    resume_hint = f"  continue it with: agentmill runs resume {run_id}\n"
    assert f"⏸ run {run_id} interrupted\n{resume_hint}" in stderr
    for command in ("show", "logs"):
        interrupted = cli.run("runs", command, run_id)
        assert interrupted.returncode == 0, interrupted.stderr
        assert interrupted.stderr.endswith(f"⏸ run {run_id} interrupted\n{resume_hint}")

    cancelled = cli.run("runs", "cancel", run_id)
    assert cancelled.returncode == 0, cancelled.stderr
    shown = cli.run("runs", "show", run_id)
    closing = f"■ run {run_id} cancelled\n  resume it with: agentmill runs resume {run_id}\n"
    assert cancelled.stderr == closing
    assert shown.stderr == closing
