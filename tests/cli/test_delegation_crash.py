"""kill -9 in the middle of a delegation (an agent used as a tool, itself calling tools),
then `agentmill runs resume`: neither the parent's nor the child's finished requests and
calls are made again; the child's interrupted call runs again, once, with its key."""

from __future__ import annotations

import json
from collections import Counter

from tests.cli import scripted
from tests.cli.conftest import Cli

PROJECT_TOOLS = '''
import os
import time

from agentmill.agents.tools.context import current_call


def step(n: int) -> str:
    """Do step n of the work."""
    key = current_call().idempotency_key
    with open(os.environ["AGENTMILL_TEST_CALL_LOG"], "a") as log:
        log.write(f"tool-start {n} {key}\\n")
    if n == 2:
        time.sleep(float(os.environ.get("AGENTMILL_TEST_SLOW_TOOL", "0")))
    return f"did {n}"
'''

CONFIG = """
version: 1
models: {default: openai:gpt-4o, small: openai:gpt-4o-mini}
agents:
  worker:
    tools: [{agent: helper}]
  helper:
    model: small
    tools: [{function: project_tools:step}]
workflows:
  w:
    steps:
      - {id: work, agent: worker, prompt: "get it done"}
"""


def test_kill_9_inside_a_delegation_resumes_the_child_without_repeating_any(
    any_backend_cli: Cli,
) -> None:
    cli = any_backend_cli
    (cli.cwd / "project_tools.py").write_text(PROJECT_TOOLS)
    config = cli.cwd / "agentmill.yaml"
    config.write_text(CONFIG)
    cli.env["AGENTMILL_TEST_SLOW_TOOL"] = "60"
    process = scripted.start(cli, "delegation_cli.py", "run", str(config), "w")
    scripted.wait_for(cli, "tool-start 2")
    scripted.kill_9(process)
    (run,) = json.loads(cli.run("runs", "list", "--json").stdout)
    keys = {n: f"{run['run_id']}/work>t1.1/t{n}.1" for n in range(1, 4)}

    cli.env["AGENTMILL_TEST_SLOW_TOOL"] = "0"
    resumed = scripted.run(cli, "delegation_cli.py", "runs", "resume", run["run_id"], "--json")
    assert resumed.returncode == 0, resumed.stderr
    result = json.loads(resumed.stdout)
    assert result["status"] == "succeeded"
    assert result["outputs"] == {"work": "helper said [\"results ['did 1', 'did 2', 'did 3']\"]"}

    counts = Counter(cli.calls())
    assert counts["parent 1"] == 1, "the parent's request was made again"
    assert counts["parent 2"] == 1
    for turn in range(1, 5):
        assert counts[f"child {turn}"] == 1, f"the child's request {turn} was made again"
    assert counts[f"tool-start 1 {keys[1]}"] == 1, "the child's finished call ran again"
    assert counts[f"tool-start 2 {keys[2]}"] == 2  # the call the kill cut off, same key
    assert counts[f"tool-start 3 {keys[3]}"] == 1
