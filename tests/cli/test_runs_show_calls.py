"""`agentmill runs show` lists each step's model requests and tool calls under it (and as
`calls` per step with --json), the same locally and against a server."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.cli.conftest import Cli
from tests.servers import free_port, wait_ready

TOOL_LOOP_CLI = Path(__file__).parents[1] / "fixtures" / "tool_loop_cli.py"

PROJECT_TOOLS = '''
def step(n: int) -> str:
    """Do step n of the work."""
    if n == 2:
        raise ValueError("step 2 is broken\\nsecond line")
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


def _run_with_tools(cli: Cli) -> str:
    (cli.cwd / "project_tools.py").write_text(PROJECT_TOOLS)
    (cli.cwd / "agentmill.yaml").write_text(CONFIG)
    cli.env["AGENTMILL_TEST_TOOL_TURNS"] = "3"
    ran = subprocess.run(
        [sys.executable, str(TOOL_LOOP_CLI), "run", "agentmill.yaml", "w", "--json"],
        cwd=cli.cwd, env=cli.env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    return str(json.loads(ran.stdout)["run_id"])


def _call_lines(text: str) -> list[str]:
    """The rows of the calls (indented under their step), spaces collapsed."""
    rows = [line for line in text.splitlines() if re.match(r"^ {3}[mt]\d", line)]
    return [" ".join(row.split()) for row in rows]


def test_runs_show_lists_each_steps_calls_in_order(cli: Cli) -> None:
    run_id = _run_with_tools(cli)

    shown = cli.run("runs", "show", run_id)

    assert shown.returncode == 0, shown.stderr
    rows = _call_lines(shown.stdout)
    assert [row.split()[0] for row in rows] == ["m1", "t1.1", "m2", "t2.1", "m3", "t3.1", "m4"]
    assert re.fullmatch(r"m1 succeeded openai:gpt-4o \d+/\d+ \S+ \d+\.\d\ds", rows[0])
    assert re.fullmatch(r't1\.1 succeeded → step\(\{"n": 1\}\) 7 chars \d+\.\d\ds', rows[1])
    assert re.fullmatch(
        r't2\.1 failed → step\(\{"n": 2\}\) ✘ ValueError: step 2 is broken \d+\.\d\ds', rows[3]
    )
    lines = [line.strip() for line in shown.stdout.splitlines()]
    assert lines.index(next(line for line in lines if line.startswith("m1"))) == 1 + next(
        i for i, line in enumerate(lines) if line.startswith("work ")
    ), "the calls are not listed under their step"


def test_runs_show_json_has_the_calls_of_each_step(cli: Cli) -> None:
    run_id = _run_with_tools(cli)

    shown = cli.run("runs", "show", run_id, "--json")

    assert shown.returncode == 0, shown.stderr
    (step,) = json.loads(shown.stdout)["steps"]
    calls: list[dict[str, Any]] = step["calls"]
    assert [(c["call_id"], c["kind"], c["status"]) for c in calls][:4] == [
        ("m1", "model", "succeeded"),
        ("t1.1", "tool", "succeeded"),
        ("m2", "model", "succeeded"),
        ("t2.1", "tool", "failed"),
    ]
    first = calls[1]
    assert (first["name"], json.loads(first["args"]), first["size"]) == ("step", {"n": 1}, 7)
    assert first["duration"] >= 0
    assert calls[3]["error"].startswith("ValueError: step 2 is broken")
    assert calls[0]["usage"]["requests"] == 1
    assert calls[0]["args"] is None


def test_runs_show_against_a_server_prints_the_same_calls(cli: Cli) -> None:
    run_id = _run_with_tools(cli)
    local_text = cli.run("runs", "show", run_id).stdout
    local_json = json.loads(cli.run("runs", "show", run_id, "--json").stdout)
    created = cli.run("keys", "create", "--role", "viewer")
    assert created.returncode == 0, created.stderr
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "agentmill", "serve", "--port", str(port), "--workers", "0"],
        cwd=cli.cwd, env=cli.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        wait_ready(server, f"http://127.0.0.1:{port}")
        remote = Cli(cwd=cli.cwd, env={**cli.env, "AGENTMILL_URL": f"http://127.0.0.1:{port}"})
        remote.env["AGENTMILL_API_KEY"] = created.stdout.strip()
        remote_text = remote.run("runs", "show", run_id)
        remote_json = remote.run("runs", "show", run_id, "--json")
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=60)
    assert remote_text.returncode == 0, remote_text.stderr
    assert len(_call_lines(local_text)) == 7
    assert _call_lines(remote_text.stdout) == _call_lines(local_text)
    remote_step = json.loads(remote_json.stdout)["steps"][0]
    assert remote_step["calls"] == local_json["steps"][0]["calls"]
