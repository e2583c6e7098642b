"""`runtime: cli` agents in config files: schema, checks at load time, and `doctor`."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from agentmill.engine.plan import RunPlan, build_plan
from agentmill.engine.project import load_checked
from agentmill.errors import ConfigError
from agentmill.spec.loader import load_project_text
from tests.cli.conftest import Cli
from tests.cli_agents.gitrepo import make_repo


def _problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "agentmill.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_checked(path)
    return [f"{p.line}: {p.message} | {p.hint}" for p in caught.value.problems]


def test_keys_of_the_other_runtime_are_refused(tmp_path: Path) -> None:
    text = """\
agents:
  coder: {runtime: cli, command: [echo], model: openai:gpt-4o, budget: {usd: 1}}
  writer: {instructions: hi, command: [echo]}
workflows:
  w:
    steps:
      - {id: a, agent: coder, prompt: hi}
      - {id: b, agent: writer, prompt: hi}
"""
    found = _problems(tmp_path, text)
    assert any("'model', 'budget' only apply to agents with runtime: llm" in p for p in found), (
        found
    )
    assert any("'command' only apply to agents with runtime: cli" in p for p in found), found


def test_a_missing_binary_is_reported_at_validation_with_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_repo(tmp_path / "repo")
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    text = """\
agents:
  coder: {runtime: cli, preset: claude, repo: repo}
workflows:
  w:
    steps:
      - {id: a, agent: coder, prompt: hi}
"""
    (found,) = _problems(tmp_path, text)
    assert found.startswith("2: agent 'coder': 'claude' (preset claude) is not on PATH")
    assert "npm" in found  # the preset's install hint


def test_unknown_presets_missing_commands_and_non_repositories_are_reported(
    tmp_path: Path,
) -> None:
    text = f"""\
agents:
  a: {{runtime: cli, preset: claud}}
  b: {{runtime: cli, workdir: {tmp_path}}}
  c: {{runtime: cli, command: ["{sys.executable}"], repo: not-a-repo}}
workflows:
  w:
    steps:
      - {{id: a, agent: a, prompt: hi}}
      - {{id: b, agent: b, prompt: hi}}
      - {{id: c, agent: c, prompt: hi}}
"""
    found = _problems(tmp_path, text)
    assert any("unknown preset 'claud'" in p and "claude" in p for p in found), found
    assert any("preset 'generic' has no command of its own" in p for p in found), found
    assert any("is not one" in p and "git init" in p for p in found), found


def test_agent_templates_are_checked_and_a_repository_subdirectory_is_accepted(
    tmp_path: Path,
) -> None:
    repo = make_repo(tmp_path / "repo")
    (repo / "flows").mkdir()
    path = repo / "flows" / "agentmill.yaml"
    path.write_text(f"""\
agents:
  a: {{runtime: cli, command: ["{sys.executable}", "{{{{ promt }}}}"]}}
workflows:
  w:
    steps:
      - {{id: a, agent: a, prompt: hi}}
""")
    with pytest.raises(ConfigError) as caught:
        load_checked(path)
    (problem,) = caught.value.problems
    assert "promt" in problem.message
    assert "{{ prompt }}" in (problem.hint or "")


def test_sizes_limits_and_presets_reach_the_plan_snapshot(tmp_path: Path) -> None:
    text = f"""\
presets:
  claude: {{concurrency: 2}}
agents:
  coder:
    runtime: cli
    preset: claude
    max_output: 64KB
    limits: {{cpu: 10m, memory: 2GiB, processes: 64, files: 256}}
    workdir: {tmp_path}
workflows:
  w:
    steps:
      - {{id: a, agent: coder, prompt: hi}}
"""
    spec = load_project_text(text, "t.yaml").spec
    plan = RunPlan.from_json(build_plan(spec, "w").to_json())
    agent = plan.agents["coder"]
    assert agent.max_output == 64_000
    assert agent.limits.cpu == 600.0
    assert agent.limits.memory == 2 * 1024**3
    claude = plan.presets["claude"]
    assert claude.concurrency == 2
    assert claude.output == "jsonl"  # the built-in preset, with one field changed
    assert claude.command[0] == "claude"


def test_doctor_lists_presets_with_their_versions_and_credentials(
    cli: Cli, fake_bin: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    cli.env["PATH"] = f"{fake_bin}:/usr/bin:/bin"
    cli.env["HOME"] = str(home)
    for name in ("CODEX_API_KEY", "CODEX_HOME", "CLAUDE_CODE_OAUTH_TOKEN", "GEMINI_API_KEY"):
        cli.env.pop(name, None)
    cli.env["OPENAI_API_KEY"] = "sk-test-doctor-0123456789abcdef"
    shown = cli.run("doctor")
    assert "Traceback" not in shown.stderr
    text = shown.stdout
    for preset in ("claude", "codex", "gemini", "aider", "generic"):
        assert preset in text
    assert "1.0.0-fake (claude)" in text
    assert "git" in text
    # Where each tool's credentials are, by name; what is missing, with how to log in.
    tables, _, fixes = text.partition("to fix:")
    rows = {line.split()[0]: line for line in tables.splitlines() if line.strip()}
    assert "OPENAI_API_KEY" in rows["codex"]
    assert "no credentials" in rows["claude"]
    assert "claude cannot authenticate here" in fixes
    assert "run `claude` once and log in" in " ".join(fixes.split())
    assert "sk-test-doctor" not in text + shown.stderr


def test_doctor_says_how_to_install_a_missing_tool(cli: Cli, tmp_path: Path) -> None:
    cli.env["PATH"] = str(tmp_path / "empty-bin")  # whatever this machine has installed
    shown = cli.run("doctor")
    assert "Traceback" not in shown.stderr
    assert "npm install -g @anthropic-ai/claude-code" in shown.stdout


def test_a_broken_preset_in_the_file_is_reported_where_it_is(tmp_path: Path) -> None:
    text = """\
presets:
  mytool:
    command: [mytool, "{{ nonsense }}"]
    output: jsonl
    events:
      - {match: {type: done}, result: "items[oops"}
agents:
  a: {runtime: cli, preset: mytool, workdir: .}
workflows:
  w:
    steps:
      - {id: a, agent: a, prompt: hi}
"""
    found = _problems(tmp_path, text)
    assert any(p.startswith("2: preset 'mytool'") and "nonsense" in p for p in found), found
    assert any(p.startswith("2: preset 'mytool'") and "items[oops" in p for p in found), found
    assert any("'mytool' (preset mytool) is not on PATH" in p for p in found), found


_CODER = """\
agents:
  coder:
    runtime: cli
    preset: {preset}
    workdir: .
{extra}workflows:
  w:
    steps:
      - {{id: a, agent: coder, prompt: hi}}
"""


def _no_credentials(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    home.mkdir(exist_ok=True)
    monkeypatch.setenv("HOME", str(home))
    for name in (
        "ANTHROPIC_API_KEY",
        "CLAUDE_CODE_OAUTH_TOKEN",
        "ANTHROPIC_AUTH_TOKEN",
        "OPENAI_API_KEY",
        "CODEX_API_KEY",
        "CODEX_HOME",
        "GEMINI_API_KEY",
        "GOOGLE_API_KEY",
        "GOOGLE_APPLICATION_CREDENTIALS",
    ):
        monkeypatch.delenv(name, raising=False)


def test_a_tool_without_credentials_is_reported_where_its_agent_is(
    tmp_path: Path, fake_bin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_credentials(monkeypatch, tmp_path / "home")
    (found,) = _problems(tmp_path, _CODER.format(preset="codex", extra=""))
    assert found.startswith("2: agent 'coder': codex cannot authenticate here"), found
    assert "OPENAI_API_KEY" in found
    assert "~/.codex/auth.json" in found
    assert "codex login" in found  # how to fix it

    # A key set in the worker but not granted to the agent is named as such, never shown.
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-granted-0123456789")
    extra = "    env: [PATH, HOME]\n"
    (found,) = _problems(tmp_path, _CODER.format(preset="codex", extra=extra))
    assert found.startswith("6: agent 'coder': codex cannot authenticate here"), found
    assert "OPENAI_API_KEY is set but not in the agent's `env`" in found
    assert "sk-test" not in found


def test_a_tool_with_a_key_or_a_login_file_passes(
    tmp_path: Path, fake_bin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    _no_credentials(monkeypatch, home)
    (home / ".claude").mkdir()
    (home / ".claude" / ".credentials.json").write_text("{}")
    monkeypatch.setenv("GEMINI_API_KEY", "test-gemini-key-0123456789")
    (tmp_path / "agentmill.yaml").write_text("""\
agents:
  c1: {runtime: cli, preset: claude, workdir: .}
  c2: {runtime: cli, preset: gemini, workdir: .}
workflows:
  w:
    steps:
      - {id: a, agent: c1, prompt: hi}
      - {id: b, agent: c2, prompt: hi}
""")
    load_checked(tmp_path / "agentmill.yaml")
