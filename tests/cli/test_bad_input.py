"""Hostile or mistaken input reaches the user as a clear error with exit code 2, never a
traceback: deep nesting, huge or endless files, YAML bombs, invalid settings."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agentmill.cli.app import app
from tests.cli.conftest import Cli
from tests.servers import free_port

CONFIG = """\
version: 1
models: {default: openai:gpt-4o}
agents:
  a: {instructions: be brief}
workflows:
  w:
    inputs:
      items: {type: list, default: []}
      text: {type: string, default: ""}
    steps:
      - {id: s, agent: a, prompt: "{{ inputs.items }} {{ inputs.text }}"}
"""


def _config(cli: Cli, text: str = CONFIG) -> Path:
    path = cli.cwd / "agentmill.yaml"
    path.write_text(text)
    cli.env["OPENAI_API_KEY"] = "sk-test-never-sent"  # models are checked for a key
    return path


def _failed_cleanly(result: subprocess.CompletedProcess[str]) -> str:
    """The output of a command that must have ended with exit 2 and a message."""
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert result.returncode == 2, output
    return " ".join(output.split())  # messages may wrap on narrow terminals


# -- item 13: deep nesting ---------------------------------------------------------------


def test_a_deeply_nested_list_input_is_refused(cli: Cli) -> None:
    config = _config(cli)
    deep = cli.cwd / "deep.json"
    deep.write_text("[" * 10_000 + "]" * 10_000)
    result = cli.run("run", str(config), "w", "--input", "items=@deep.json", recording=True)
    output = _failed_cleanly(result)
    assert "input 'items' is nested more than 100 levels deep" in output
    assert cli.calls() == []


def test_validate_reports_thousands_of_nested_template_blocks(cli: Cli) -> None:
    blocks = 5000
    prompt = "{% if x %}" * blocks + "y" + "{% endif %}" * blocks
    config = _config(cli, CONFIG.replace("{{ inputs.items }} {{ inputs.text }}", prompt))
    output = _failed_cleanly(cli.run("validate", str(config)))
    assert f"{config}:11:" in output
    assert "the template nests too deeply" in output


# -- item 13: invalid AGENTMILL_* settings -----------------------------------------------

COMMANDS = [
    ["init", "project"],
    ["validate", "agentmill.yaml"],
    ["run", "agentmill.yaml", "w"],
    ["serve", "--port", "0"],  # the port is replaced by a free one
    ["approve", "run1", "gate"],
    ["costs"],
    ["doctor"],
    ["runs", "list"],
    ["runs", "show", "run1"],
    ["runs", "logs", "run1"],
    ["runs", "resume", "run1"],
    ["runs", "cancel", "run1"],
    ["keys", "create", "--name", "ci"],
    ["keys", "list"],
    ["keys", "revoke", "key1"],
    ["keys", "budget", "key1", "--daily-usd", "1"],
    ["cache", "stats"],
    ["cache", "clear"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda command: " ".join(command[:2]))
def test_every_command_names_an_invalid_setting_and_its_form(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # In-process on the real app: settings are checked before a command does anything.
    monkeypatch.chdir(tmp_path)
    command = [str(free_port()) if part == "0" else part for part in command]
    result = CliRunner().invoke(app, command, env={"AGENTMILL_HEARTBEAT_INTERVAL": "abc"})
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert (
        "AGENTMILL_HEARTBEAT_INTERVAL=abc is not valid: expected a number of seconds, more than 0"
        in " ".join(result.stderr.split())
    )


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("AGENTMILL_LOG_LEVEL", "LOUD", "expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
        ("AGENTMILL_LOG_JSON", "maybe", "expected true or false"),
        ("AGENTMILL_MAX_EXECUTOR_THREADS", "0", "expected a whole number, 1 or more"),
        ("AGENTMILL_CACHE_MAX_BYTES", "1.5x", "expected a whole number of bytes, more than 0"),
    ],
)
def test_an_invalid_setting_names_the_expected_form(
    cli: Cli, name: str, value: str, expected: str
) -> None:
    cli.env[name] = value
    output = _failed_cleanly(cli.run("runs", "list"))
    assert f"{name}={value} is not valid: {expected}" in output


def test_an_invalid_secret_setting_is_named_without_its_value(cli: Cli) -> None:
    cli.env["AGENTMILL_DATABASE_URL"] = "postgresql://agent:hunter2-secret@db.example:port/x"
    cli.env["AGENTMILL_LOG_LEVEL"] = "LOUD"  # two problems: both reported
    output = _failed_cleanly(cli.run("runs", "list"))
    assert "hunter2" not in output
    assert "AGENTMILL_DATABASE_URL is not valid (value not shown)" in output
    assert "postgresql://user:password@host:5432/database" in output
    assert "AGENTMILL_LOG_LEVEL=LOUD is not valid" in output


# -- item 15: input files of any size ----------------------------------------------------


def test_an_endless_input_file_is_refused_at_the_prompt_limit(cli: Cli) -> None:
    config = _config(cli)
    result = cli.run("run", str(config), "w", "--input", "text=@/dev/zero", recording=True)
    output = _failed_cleanly(result)
    assert "--input text=@/dev/zero: the file has more than 1,000,000 characters" in output
    assert "guard.max_prompt_chars" in output
    assert cli.calls() == []


def test_an_input_file_over_the_workflows_prompt_limit_is_refused_with_its_size(
    cli: Cli,
) -> None:
    config = _config(cli, CONFIG + "    guard: {max_prompt_chars: 100}\n")
    (cli.cwd / "big.txt").write_text("x" * 5000)
    result = cli.run("run", str(config), "w", "--input", "text=@big.txt", recording=True)
    output = _failed_cleanly(result)
    assert "--input text=@big.txt: the file is 5,000 bytes" in output
    assert "more than the 100 characters an input file may hold" in output
    assert "guard.max_prompt_chars" in output


def test_an_input_from_an_endless_fifo_is_refused(cli: Cli) -> None:
    config = _config(cli)
    fifo = cli.cwd / "stream"
    os.mkfifo(fifo)
    writer = threading.Thread(target=_write_until_closed, args=(fifo,), daemon=True)
    writer.start()
    result = cli.run("run", str(config), "w", "--input", "text=@stream", recording=True)
    output = _failed_cleanly(result)
    assert "the file has more than 1,000,000 characters" in output
    writer.join(timeout=60)
    assert not writer.is_alive()  # the reader closed the pipe: the writer saw EPIPE


def _write_until_closed(fifo: Path) -> None:
    chunk = b"y" * 65536
    with fifo.open("wb") as pipe:
        try:
            while True:
                pipe.write(chunk)
        except BrokenPipeError:
            return


# -- item 15: config files ---------------------------------------------------------------


def test_an_oversized_config_is_refused_before_parsing(cli: Cli) -> None:
    config = _config(cli, CONFIG + "#" + "x" * (1024 * 1024) + "\n")
    output = _failed_cleanly(cli.run("validate", str(config)))
    assert f"the file is {config.stat().st_size:,} bytes;" in output
    assert "a config file may be at most 1 MiB (1,048,576 bytes)" in output


def test_an_endless_config_is_refused(cli: Cli) -> None:
    output = _failed_cleanly(cli.run("validate", "/dev/zero"))
    assert "the file is larger than 1 MiB (1,048,576 bytes)" in output


def test_a_yaml_bomb_in_the_config_is_refused(cli: Cli) -> None:
    levels = ["&l0 [" + ", ".join(['"lol"'] * 9) + "]"]
    levels += [f"&l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]
    bomb = "[" + ", ".join(levels) + "]"  # 9**9 strings once expanded
    config = _config(cli, CONFIG.replace("default: []", f"default: {bomb}"))
    output = _failed_cleanly(cli.run("validate", str(config)))
    assert (
        f"{config}:8: the file holds more than 100,000 values (mappings, lists and scalars; "
        "an alias counts as all the values it repeats)" in output
    )


def test_deeply_nested_yaml_is_refused(cli: Cli) -> None:
    nested = "[" * 150 + "]" * 150
    config = _config(cli, CONFIG.replace("default: []", f"default: {nested}"))
    output = _failed_cleanly(cli.run("validate", str(config)))
    assert f"{config}:8:" in output
    assert "nested too deeply: more than 100 levels of mappings and lists" in output
