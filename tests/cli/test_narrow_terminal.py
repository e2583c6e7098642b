"""Commands printed for copying stay whole on a narrow terminal (COLUMNS=40)."""

from __future__ import annotations

import re
from pathlib import Path

from agentmill.agents.cli.presets import load_presets
from tests.cli.conftest import Cli

FAILING = """
version: 1
models: {default: openai:gpt-4o}
agents:
  a: {instructions: brief}
workflows:
  w:
    steps:
      - {id: one, agent: a, prompt: "one"}
"""


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines()]


def test_hints_and_next_steps_are_never_wrapped(cli: Cli) -> None:
    cli.env["COLUMNS"] = "40"
    project = "a/rather/deeply/nested/project"
    created = cli.run("init", project)
    assert created.returncode == 0, created.stderr
    assert f"agentmill validate {project}/agentmill.yaml" in _lines(created.stdout)
    run = f"agentmill run {project}/agentmill.yaml review --input diff=@{project}/sample.diff"
    assert run in _lines(created.stdout)

    listed = cli.run("runs", "list")
    assert "no runs yet: start one with `agentmill run FILE WORKFLOW`" in _lines(listed.stdout)
    keys = cli.run("keys", "list")
    assert "no keys yet: agentmill keys create --tenant T --role admin" in _lines(keys.stdout)

    (cli.cwd / "agentmill.yaml").write_text(FAILING)
    cli.env["AGENTMILL_TEST_FAIL_ON"] = "one"
    failed = cli.run("run", "agentmill.yaml", "w", recording=True)
    assert failed.returncode == 1
    run_id = re.findall(r"^run (\w+) started", failed.stderr, re.MULTILINE)[0]
    hint = f"retry the failed steps with: agentmill runs resume {run_id}"
    assert hint in _lines(failed.stderr)


def test_doctor_prints_each_install_command_whole(cli: Cli, tmp_path: Path) -> None:
    cli.env["COLUMNS"] = "40"
    cli.env["PATH"] = str(tmp_path / "empty")  # every command-line tool is missing
    result = cli.run("doctor")
    assert result.returncode == 0, result.stderr
    lines = _lines(result.stdout)
    installs = {preset.install for preset in load_presets().values() if preset.command}
    assert installs
    for install in installs:
        assert any(line.startswith(install) for line in lines), (install, result.stdout)
