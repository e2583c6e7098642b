"""`agentmill approve RUN STEP#CALL --args JSON`: a tool call waiting for approval runs with
the arguments a person gave instead of the model's; the live view says how to decide it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import sqlalchemy as sa

from agentmill.settings import Settings
from agentmill.store.db import create_sync_engine
from agentmill.store.tables import approvals
from tests.cli.conftest import Cli

TOOL_LOOP_CLI = Path(__file__).parents[1] / "fixtures" / "tool_loop_cli.py"

PROJECT_TOOLS = '''
import os

from agentmill.agents.tools.context import current_call


def step(n: int) -> str:
    """Do step n of the work."""
    with open(os.environ["AGENTMILL_TEST_CALL_LOG"], "a") as log:
        log.write(f"tool {n} {current_call().idempotency_key}\\n")
    return f"did {n}"
'''

CONFIG = """
version: 1
models: {default: openai:gpt-4o}
agents:
  worker:
    tools: [{function: project_tools:step, approve: true}]
workflows:
  w:
    steps:
      - {id: work, agent: worker, prompt: "do the work"}
"""


def _wait_for_pending(cli: Cli, run_id: str, timeout: float = 60) -> list[str]:
    """The gate ids of the run's pending approvals, once there is one."""
    settings = Settings(
        home=Path(cli.env["AGENTMILL_HOME"]), database_url=cli.env.get("AGENTMILL_DATABASE_URL")
    )
    engine = create_sync_engine(settings.resolved_database_url)
    query = sa.select(approvals.c.step_id).where(
        approvals.c.run_id == run_id, approvals.c.status == "pending"
    )
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                gates = [row.step_id for row in conn.execute(query)]
            if gates:
                return gates
            time.sleep(0.1)
    finally:
        engine.dispose()
    raise AssertionError(f"run {run_id} did not wait for a tool approval")


def test_approve_with_args_runs_the_call_with_them(any_backend_cli: Cli) -> None:
    cli = any_backend_cli
    (cli.cwd / "project_tools.py").write_text(PROJECT_TOOLS)
    config = cli.cwd / "agentmill.yaml"
    config.write_text(CONFIG)
    cli.env["AGENTMILL_TEST_TOOL_TURNS"] = "1"
    process = subprocess.Popen(
        [sys.executable, str(TOOL_LOOP_CLI), "run", str(config), "w"],
        cwd=cli.cwd,
        env=cli.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert process.stderr is not None
        first = process.stderr.readline()  # "run <id> started (w)"
        run_id = first.split()[1]
        assert _wait_for_pending(cli, run_id) == ["work#t1.1"]
        listed = cli.run("approvals", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        (waiting,) = json.loads(listed.stdout)
        assert (waiting["run_id"], waiting["step_id"]) == (run_id, "work#t1.1")
        assert (waiting["tool"], waiting["arguments"]) == ("step", {"n": 1})
        table = cli.run("approvals", "list", "--run", run_id)
        assert "work#t1.1" in table.stdout
        assert 'Call step with {"n": 1}' in table.stdout
        assert "agentmill approve RUN GATE" in table.stderr

        bad = cli.run("approve", run_id, "work#t1.1", "--args", "[1]")
        assert bad.returncode == 2
        assert "--args must be a JSON object" in bad.stderr
        broken = cli.run("approve", run_id, "work#t1.1", "--args", "{n: 7}")
        assert broken.returncode == 2
        assert "--args is not valid JSON" in broken.stderr
        assert "Traceback" not in bad.stderr + broken.stderr

        result = cli.run("approve", run_id, "work#t1.1", "--args", '{"n": 7}')
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(
            f"run {run_id}: step work#t1.1 approved with edited arguments by cli:"
        )
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr
    assert 'work#t1.1 waits for approval: Call step with {"n": 1}' in stderr
    assert f"agentmill approve {run_id} 'work#t1.1' [--reject] [--args JSON]" in stderr
    tools = [line for line in cli.calls() if line.startswith("tool ")]
    assert tools == [f"tool 7 {run_id}/work/t1.1"]
    decided = cli.run("approvals", "list", "--status", "approved", "--json")
    (approved,) = json.loads(decided.stdout)
    assert approved["edited_arguments"] == {"n": 7}
    unknown = cli.run("approvals", "list", "--status", "maybe")
    assert unknown.returncode == 2
    assert "unknown approval status 'maybe'" in unknown.stderr
