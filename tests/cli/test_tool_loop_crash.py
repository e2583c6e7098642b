"""kill -9 in the middle of a step's tool loop, then `agentmill runs resume`: no finished
model request or tool call is made again; the interrupted call runs again, once, with the
same idempotency key."""

from __future__ import annotations

import json
from collections import Counter

from tests.cli import scripted
from tests.cli.conftest import Cli

PROJECT_TOOLS = '''
import json
import os
import time

from agentmill.agents.tools.context import current_call


def step(n: int) -> str:
    """Do step n of the work."""
    key = current_call().idempotency_key
    with open(os.environ["AGENTMILL_TEST_CALL_LOG"], "a") as log:
        log.write(f"tool-start {n} {key}\\n")
    if n == 4:
        time.sleep(float(os.environ.get("AGENTMILL_TEST_SLOW_TOOL", "0")))
    with open(os.environ["AGENTMILL_TEST_CALL_LOG"], "a") as log:
        log.write(f"tool-end {n} {key}\\n")
    return f"did {n}"
'''

CONFIG = """
version: 1
models: {default: openai:gpt-4o}
agents:
  worker:
    tools: [{function: project_tools:step}]
workflows:
  w:
    steps:
      - {id: work, agent: worker, prompt: "do the work"}
"""


def test_kill_9_after_the_third_tool_call_resumes_without_repeating_any(
    any_backend_cli: Cli,
) -> None:
    cli = any_backend_cli
    (cli.cwd / "project_tools.py").write_text(PROJECT_TOOLS)
    config = cli.cwd / "agentmill.yaml"
    config.write_text(CONFIG)
    cli.env["AGENTMILL_TEST_SLOW_TOOL"] = "60"
    process = scripted.start(cli, "tool_loop_cli.py", "run", str(config), "w")
    scripted.wait_for(cli, "tool-start 4")
    scripted.kill_9(process)
    listed = cli.run("runs", "list", "--json")
    (run,) = json.loads(listed.stdout)
    keys = {n: f"{run['run_id']}/work/t{n}.1" for n in range(1, 6)}
    before = Counter(cli.calls())
    assert before["model 4"] == 1
    assert before[f"tool-start 4 {keys[4]}"] == 1

    cli.env["AGENTMILL_TEST_SLOW_TOOL"] = "0"
    resumed = scripted.run(cli, "tool_loop_cli.py", "runs", "resume", run["run_id"], "--json")
    assert resumed.returncode == 0, resumed.stderr
    result = json.loads(resumed.stdout)
    assert result["status"] == "succeeded"
    assert result["outputs"] == {"work": "results ['did 1', 'did 2', 'did 3', 'did 4', 'did 5']"}

    counts = Counter(cli.calls())
    for turn in range(1, 5):
        assert counts[f"model {turn}"] == 1, f"model request {turn} was made again"
    assert counts["model 5"] == 1
    assert counts["model 6"] == 1
    for n in range(1, 4):
        assert counts[f"tool-start {n} {keys[n]}"] == 1, f"tool call {n} ran again"
    # The call the kill cut off ran again, once, with the same idempotency key.
    assert counts[f"tool-start 4 {keys[4]}"] == 2
    assert counts[f"tool-end 4 {keys[4]}"] == 1
