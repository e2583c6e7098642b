"""`agentmill approve` from another terminal wakes a run waiting at its gate."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import sqlalchemy as sa

from agentmill.settings import Settings
from agentmill.store.db import create_sync_engine
from agentmill.store.tables import approvals
from tests.cli.conftest import Cli

GATED = """
version: 1
models: {default: openai:gpt-4o}
agents:
  a: {instructions: be brief}
workflows:
  w:
    steps:
      - {id: draft, agent: a, prompt: "draft"}
      - id: sign-off
        needs: [draft]
        approval: {prompt: "Ship {{ steps.draft.output }}?"}
      - id: publish
        agent: a
        needs: [sign-off]
        when: "{{ steps['sign-off'].approved }}"
        prompt: "publish ({{ steps['sign-off'].comment }})"
"""


def _start_gated_run(cli: Cli) -> tuple[subprocess.Popen[str], str]:
    """`agentmill run` in the background; returns it and the run id once it waits."""
    config = cli.cwd / "agentmill.yaml"
    config.write_text(GATED)
    process = cli.start("run", str(config), "w", recording=True)
    assert process.stderr is not None
    first = process.stderr.readline()  # "run <id> started (w)"
    assert first.startswith("run "), first
    run_id = first.split()[1]
    _wait_for_gate(cli, run_id)
    return process, run_id


def _wait_for_gate(cli: Cli, run_id: str, timeout: float = 60) -> None:
    settings = Settings(
        home=Path(cli.env["AGENTMILL_HOME"]), database_url=cli.env.get("AGENTMILL_DATABASE_URL")
    )
    engine = create_sync_engine(settings.resolved_database_url)
    query = sa.select(approvals.c.status).where(approvals.c.run_id == run_id)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                if conn.execute(query).first() is not None:
                    return
            time.sleep(0.1)
    finally:
        engine.dispose()
    raise AssertionError(f"run {run_id} did not reach its approval gate")


def _finish(process: subprocess.Popen[str]) -> tuple[int, str]:
    try:
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    return process.returncode, stderr


def test_approve_wakes_the_waiting_run_and_is_recorded_once(any_backend_cli: Cli) -> None:
    cli = any_backend_cli
    process, run_id = _start_gated_run(cli)
    result = cli.run("approve", run_id, "sign-off", "--comment", "lgtm")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"run {run_id}: step sign-off approved by cli:")
    code, stderr = _finish(process)
    assert code == 0, stderr
    assert cli.calls() == ["draft", "publish (lgtm)"]
    again = cli.run("approve", run_id, "sign-off", "--reject")
    assert again.returncode == 2
    assert "was already approved by cli:" in again.stderr
    assert "Traceback" not in again.stderr


def test_reject_skips_the_gated_step_and_bad_steps_are_user_errors(cli: Cli) -> None:
    process, run_id = _start_gated_run(cli)
    unknown = cli.run("approve", run_id, "draft")
    assert unknown.returncode == 2
    assert "no approval step 'draft'" in unknown.stderr
    result = cli.run("approve", run_id, "sign-off", "--reject")
    assert result.returncode == 0, result.stderr
    assert "rejected by cli:" in result.stdout
    code, stderr = _finish(process)
    assert code == 0, stderr
    assert cli.calls() == ["draft"]
    assert "publish skipped" in stderr
