"""Following a run from another process, and a real run on the embedded local model."""

from __future__ import annotations

import json
import time

import pytest

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
      - {id: two, agent: a, needs: [one], prompt: "two"}
      - {id: three, agent: a, needs: [two], prompt: "three"}
"""


def test_logs_follow_from_another_process_streams_until_the_end(cli: Cli) -> None:
    config = cli.cwd / "agentmill.yaml"
    config.write_text(SLOW)
    cli.env["AGENTMILL_TEST_LATENCY"] = "0.5"
    runner = cli.start("run", str(config), "w", "--json", recording=True)
    deadline = time.monotonic() + 60
    while not cli.calls():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    run_id = json.loads(cli.run("runs", "list", "--json").stdout)[0]["run_id"]
    followed = cli.run("runs", "logs", run_id, "--follow")
    runner.communicate(timeout=60)
    assert followed.returncode == 0, followed.stderr
    events = [json.loads(line) for line in followed.stdout.splitlines()]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["kind"] == "run_finished"
    assert [e["step"] for e in events if e["kind"] == "step_finished"] == ["one", "two", "three"]


LOCAL = """
version: 1
agents:
  poet: {instructions: Answer in one short sentence., max_tokens: 12, temperature: 0}
workflows:
  w:
    steps:
      - {id: a, agent: poet, prompt: "Name a colour."}
      - {id: b, agent: poet, prompt: "Name an animal."}
"""


@pytest.mark.local_model
def test_a_workflow_runs_on_the_embedded_local_model_by_default(cli: Cli) -> None:
    config = cli.cwd / "agentmill.yaml"
    config.write_text(LOCAL)
    result = cli.run("run", str(config), "w", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["status"] == "succeeded"
    for step in data["steps"]:
        assert step["model"] == "local:smollm2"
        assert step["output"].strip()
        assert 0 < step["usage"]["output_tokens"] <= 12
        assert step["usage"]["input_tokens"] > 0
