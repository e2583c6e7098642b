"""The CLI as a user meets it: exit codes, messages, --json, init, validate, doctor."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.cli.conftest import Cli

GOOD = """
version: 1
models: {default: openai:gpt-4o}
agents:
  a: {instructions: be brief}
workflows:
  w:
    inputs:
      topic: {type: string}
      rounds: {type: integer, default: 1}
    steps:
      - {id: first, agent: a, prompt: "about {{ inputs.topic }} x{{ inputs.rounds }}"}
      - {id: second, agent: a, needs: [first], prompt: "then {{ steps.first.output }}"}
"""


def _config(cli: Cli, text: str = GOOD, name: str = "agentmill.yaml") -> Path:
    path = cli.cwd / name
    path.write_text(text)
    return path


def test_run_json_result_has_the_documented_shape(cli: Cli) -> None:
    config = _config(cli)
    result = cli.run("run", str(config), "w", "--input", "topic=tea", "--json", recording=True)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data) == {
        "run_id",
        "workflow",
        "status",
        "inputs",
        "outputs",
        "error",
        "usage",
        "created_at",
        "started_at",
        "finished_at",
        "cost",
        "steps",
    }
    assert data["status"] == "succeeded"
    assert data["inputs"] == {"topic": "tea", "rounds": 1}
    assert data["outputs"] == {"second": "done then done about tea x1"}
    assert [s["key"] for s in data["steps"]] == ["first", "second"]
    first = data["steps"][0]
    assert set(first) == {
        "key",
        "step",
        "index",
        "status",
        "attempt",
        "model",
        "usage",
        "elapsed",
        "error",
        "output",
        "cost_usd",
        "details",
        "calls",
    }
    assert first["calls"] == []  # an agent without tools makes no recorded calls
    assert first["usage"]["requests"] == 1
    assert first["cost_usd"] > 0
    assert data["cost"]["calls"] == 2
    assert data["cost"]["complete"] is True
    assert first["usage"]["output_tokens"] > 0


def test_run_prints_progress_outputs_and_run_id(cli: Cli) -> None:
    config = _config(cli)
    result = cli.run("run", str(config), "w", "-i", "topic=tea", recording=True)
    assert result.returncode == 0, result.stderr
    assert "done then done about tea x1" in result.stdout
    assert "first finished" in result.stderr
    assert "succeeded" in result.stderr


def test_input_from_a_file_with_at_sign(cli: Cli) -> None:
    config = _config(cli)
    (cli.cwd / "topic.txt").write_text("green tea")
    result = cli.run("run", str(config), "w", "-i", "topic=@topic.txt", "--json", recording=True)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["inputs"]["topic"] == "green tea"


def test_a_failed_run_exits_1_and_says_how_to_resume(cli: Cli) -> None:
    config = _config(cli)
    cli.env["AGENTMILL_TEST_FAIL_ON"] = "then"
    result = cli.run("run", str(config), "w", "-i", "topic=tea", recording=True)
    assert result.returncode == 1
    assert "step 'second' failed" in result.stderr
    assert "HTTP 400" in result.stderr
    assert "agentmill runs resume" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_input_exits_2_naming_it(cli: Cli) -> None:
    config = _config(cli)
    result = cli.run("run", str(config), "w", recording=True)
    assert result.returncode == 2
    assert "topic" in result.stderr
    assert "--input" in result.stderr
    assert "Traceback" not in result.stderr


def test_unreadable_input_file_exits_2(cli: Cli) -> None:
    config = _config(cli)
    result = cli.run("run", str(config), "w", "-i", "topic=@nope.txt", recording=True)
    assert result.returncode == 2
    assert "nope.txt" in result.stderr


def test_unknown_workflow_exits_2_listing_the_known_ones(cli: Cli) -> None:
    config = _config(cli)
    result = cli.run("run", str(config), "nope", recording=True)
    assert result.returncode == 2
    assert "no workflow 'nope'" in result.stderr
    assert "w" in result.stderr


def test_bad_config_exits_2_with_file_and_line(cli: Cli) -> None:
    config = _config(cli, GOOD.replace("needs: [first]", "needs: [frist]"))
    result = cli.run("validate", str(config))
    assert result.returncode == 2
    assert f"{config}:13: step 'second' needs unknown step 'frist'" in result.stderr
    assert "did you mean 'first'" in result.stderr
    assert "frist" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_config_file_exits_2(cli: Cli) -> None:
    result = cli.run("validate", "missing.yaml")
    assert result.returncode == 2
    assert "missing.yaml" in result.stderr


def test_missing_api_key_is_reported_at_validation_without_a_value(cli: Cli) -> None:
    config = _config(cli)
    result = cli.run("run", str(config), "w", "-i", "topic=tea")
    assert result.returncode == 2
    assert "OPENAI_API_KEY" in result.stderr
    assert "agentmill.yaml" in result.stderr


def test_init_then_validate_the_scaffold(cli: Cli) -> None:
    created = cli.run("init", "proj")
    assert created.returncode == 0, created.stderr
    assert (cli.cwd / "proj" / "agentmill.yaml").exists()
    again = cli.run("init", "proj")
    assert again.returncode == 2
    assert "refusing to overwrite" in again.stderr
    validated = cli.run("validate", "proj/agentmill.yaml")
    assert validated.returncode == 0, validated.stderr
    assert "2 workflow(s)" in validated.stdout


def test_runs_commands_on_an_unknown_id_exit_2(cli: Cli) -> None:
    for command in (["runs", "show", "nope"], ["runs", "resume", "nope"], ["runs", "cancel", "x"]):
        result = cli.run(*command)
        assert result.returncode == 2, command
        assert "no run with id" in result.stderr
        assert "Traceback" not in result.stderr


def test_runs_list_logs_and_resume_of_a_finished_run(cli: Cli) -> None:
    config = _config(cli)
    done = cli.run("run", str(config), "w", "-i", "topic=tea", "--json", recording=True)
    run_id = json.loads(done.stdout)["run_id"]
    listed = cli.run("runs", "list")
    assert run_id in listed.stdout
    logs = cli.run("runs", "logs", run_id)
    kinds = [json.loads(line)["kind"] for line in logs.stdout.splitlines()]
    assert kinds[0] == "run_started"
    assert kinds[-1] == "run_finished"
    resumed = cli.run("runs", "resume", run_id)
    assert resumed.returncode == 2
    assert "already succeeded" in resumed.stderr


def test_doctor_reports_without_printing_secrets(cli: Cli) -> None:
    cli.env["OPENAI_API_KEY"] = "sk-test-secret-value-123"
    result = cli.run("doctor")
    assert result.returncode == 0, result.stderr
    assert "database" in result.stdout
    assert "OPENAI_API_KEY" in result.stdout
    assert "sk-test-secret-value-123" not in result.stdout + result.stderr
    assert "local:smollm2" in result.stdout


def test_help_lists_the_commands(cli: Cli) -> None:
    result = cli.run("--help")
    assert result.returncode == 0
    for command in ("init", "validate", "run", "runs", "doctor"):
        assert command in result.stdout


def test_a_non_utf8_input_file_exits_2(cli: Cli) -> None:
    config = _config(cli)
    (cli.cwd / "binary.bin").write_bytes(b"\xff\xfe\x00\x81")
    result = cli.run("run", str(config), "w", "-i", "topic=@binary.bin", recording=True)
    assert result.returncode == 2
    assert "not UTF-8" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unreachable_database_exits_2_without_the_password(cli: Cli) -> None:
    cli.env["AGENTMILL_DATABASE_URL"] = "postgresql://app:s3cret@127.0.0.1:1/agentmill"
    result = cli.run("runs", "list")
    assert result.returncode == 2
    assert "cannot open the database postgresql://app:***@127.0.0.1:1/agentmill" in result.stderr
    assert "AGENTMILL_DATABASE_URL" in result.stderr
    assert "s3cret" not in result.stderr
    assert "Traceback" not in result.stderr


def test_two_cli_processes_do_not_take_or_interrupt_each_others_runs(cli: Cli) -> None:
    config = _config(cli)
    cli.env["AGENTMILL_TEST_LATENCY"] = "1.0"
    first = cli.start("run", str(config), "w", "-i", "topic=long", "--json", recording=True)
    while not cli.calls():
        time.sleep(0.05)
    cli.env["AGENTMILL_TEST_LATENCY"] = "0.1"
    second = cli.run("run", str(config), "w", "-i", "topic=short", "--json", recording=True)
    out, err = first.communicate(timeout=60)
    assert second.returncode == 0, second.stderr
    assert first.returncode == 0, err
    assert json.loads(out)["inputs"]["topic"] == "long"
    assert json.loads(out)["status"] == "succeeded"
    assert json.loads(second.stdout)["inputs"]["topic"] == "short"
