"""Reading real output: each fake tool runs as a subprocess with its preset's argv and
stdin, and its stdout goes through StreamParser line by line."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from agentmill.agents.cli.parse import CliEvent, CliSummary, StreamParser
from agentmill.agents.cli.presets import PresetSpec, load_presets, render_argv
from agentmill.spec.templates import render
from tests.cli_agents.gitrepo import git, git_env, make_repo

FAKES = Path(__file__).parents[1] / "fixtures" / "fake_cli"
PROMPT = 'Fix the bug; then say "done" --help $(id)'


def run_fake(
    tool: str,
    cwd: Path,
    *,
    prompt: str = PROMPT,
    session: str | None = None,
    env: dict[str, str] | None = None,
) -> tuple[subprocess.CompletedProcess[str], CliSummary, list[CliEvent]]:
    """Run fake_<tool>.py the way the preset runs the real tool; parse what it prints."""
    preset = load_presets()[tool]
    variables = {"prompt": prompt, "run_id": "run-1", "step_id": "step-1", "workdir": str(cwd)}
    templates = preset.command
    if session is not None:
        assert preset.resume is not None
        templates = preset.resume
        variables["session_id"] = session
    argv = [sys.executable, str(FAKES / f"fake_{tool}.py"), *render_argv(templates[1:], variables)]
    stdin = render(preset.stdin, variables) if preset.stdin is not None else ""
    done = subprocess.run(
        argv,
        input=stdin,
        cwd=cwd,
        env={**git_env(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    parser = StreamParser(preset)
    events = [
        event for line in done.stdout.splitlines(keepends=True) for event in parser.feed(line)
    ]
    return done, parser.summary, events


def read_log(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_claude_stream_json(tmp_path: Path) -> None:
    log = tmp_path / "calls.jsonl"
    env = {"FAKE_CLI_LOG": str(log), "FAKE_CLI_WRITE": "notes.txt"}
    done, summary, events = run_fake("claude", tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert summary.session_id is not None
    uuid.UUID(summary.session_id)
    assert summary.result == f"Done: {PROMPT}"
    assert summary.output == summary.result
    assert summary.cost_usd == pytest.approx(0.0123)
    assert (summary.input_tokens, summary.output_tokens) == (1200, 345)
    assert summary.tools == 1
    assert summary.error is None
    assert summary.text == f"Let me look at the task.\nDone: {PROMPT}\n"
    assert [event.value for event in events if event.kind == "tool"] == ["Write"]
    assert events[0] == CliEvent(kind="session", value=summary.session_id)
    assert (tmp_path / "notes.txt").is_file()
    [call] = read_log(log)
    assert call["prompt"] == PROMPT  # through stdin, unchanged
    assert call["resumed"] is None
    assert call["cwd"] == str(tmp_path)


def test_claude_resume_keeps_the_session(tmp_path: Path) -> None:
    log = tmp_path / "calls.jsonl"
    session = str(uuid.uuid4())
    done, summary, _ = run_fake("claude", tmp_path, session=session, env={"FAKE_CLI_LOG": str(log)})
    assert done.returncode == 0, done.stderr
    assert summary.session_id == session
    [call] = read_log(log)
    assert call["resumed"] == session
    assert f"--resume={session}" in call["argv"]  # type: ignore[operator]


def test_claude_error_result(tmp_path: Path) -> None:
    done, summary, _ = run_fake("claude", tmp_path, env={"FAKE_CLI_ERROR": "API Error: 529"})
    assert done.returncode == 1
    assert summary.error == "API Error: 529"
    assert summary.cost_usd == pytest.approx(0.0123)


def test_claude_session_is_known_before_a_hang(tmp_path: Path) -> None:
    """The init line is enough to resume: a tool killed mid-run has told its session."""
    preset = load_presets()["claude"]
    argv = [sys.executable, str(FAKES / "fake_claude.py"), *preset.command[1:]]
    env = {**git_env(), "FAKE_CLI_HANG_AFTER_INIT": "1"}
    with subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=tmp_path, env=env, text=True
    ) as proc:
        assert proc.stdin is not None
        assert proc.stdout is not None
        proc.stdin.write("hello")
        proc.stdin.close()
        line = proc.stdout.readline()
        proc.kill()
    parser = StreamParser(preset)
    parser.feed(line)
    assert parser.summary.session_id is not None
    assert parser.summary.result is None


def test_codex_exec_json(tmp_path: Path) -> None:
    log = tmp_path / "calls.jsonl"
    env = {"FAKE_CLI_LOG": str(log), "FAKE_CLI_WRITE": "notes.txt"}
    done, summary, events = run_fake("codex", tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert summary.session_id is not None
    assert summary.result == f"Done: {PROMPT}"
    assert summary.cost_usd is None
    assert (summary.input_tokens, summary.output_tokens) == (2400, 120)
    assert [event.value for event in events if event.kind == "tool"] == [
        "bash -lc ls",
        "file_change",
    ]
    assert summary.error is None
    [call] = read_log(log)
    assert call["prompt"] == PROMPT


def test_codex_resume_and_failure(tmp_path: Path) -> None:
    log = tmp_path / "calls.jsonl"
    env = {"FAKE_CLI_LOG": str(log), "FAKE_CLI_ERROR": "usage limit reached"}
    done, summary, _ = run_fake("codex", tmp_path, session="th-1", env=env)
    assert done.returncode == 1
    assert summary.session_id == "th-1"
    assert summary.error == "usage limit reached"  # the error event and turn.failed, once
    assert summary.result is None
    [call] = read_log(log)
    assert call["argv"] == ["exec", "--json", "resume", "th-1", "-"]


def test_gemini_stream_json(tmp_path: Path) -> None:
    done, summary, events = run_fake("gemini", tmp_path, env={"FAKE_CLI_WRITE": "notes.txt"})
    assert done.returncode == 0, done.stderr
    assert summary.session_id is not None
    assert summary.result is None
    assert summary.output == f"I will do it. Done: {PROMPT}"  # deltas joined as they came
    assert summary.tools == 1
    assert (summary.input_tokens, summary.output_tokens) == (900, 60)
    assert PROMPT not in [event.value for event in events if event.kind == "text"]  # user echo


def test_gemini_resume_and_failure(tmp_path: Path) -> None:
    done, summary, _ = run_fake("gemini", tmp_path, session="g-7", env={"FAKE_CLI_ERROR": "quota"})
    assert done.returncode == 1
    assert summary.session_id == "g-7"
    assert summary.error == "quota"


def test_aider_plain_text(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    log = tmp_path / "calls.jsonl"
    env = {"FAKE_CLI_LOG": str(log), "FAKE_CLI_WRITE": "notes.txt"}
    done, summary, events = run_fake("aider", repo, env=env)
    assert done.returncode == 0, done.stderr
    assert summary.session_id is None
    assert summary.result is None
    assert f"Done: {PROMPT}\n" in summary.output
    assert "Applied edit to notes.txt\n" in summary.output
    assert all(event.kind == "text" and event.value.endswith("\n") for event in events)
    [call] = read_log(log)
    assert call["prompt"] == PROMPT  # one --message= argument, never read as an option
    assert "feat: edit notes.txt" in git(repo, "log", "--format=%s")


def test_garbage_lines_in_jsonl_are_text_never_errors() -> None:
    parser = StreamParser(load_presets()["claude"])
    lines = [
        "",
        "   ",
        "not json at all",
        "[1, 2]",
        "42",
        "null",
        '{"type": "result", "result": "cut mid-li',
        '{"type": "unknown", "x": 1}',
        '{"type": "assistant", "message": "not a dict"}',
        '{"type": "assistant", "message": {"content": "not a list"}}',
        '{"type": "result", "total_cost_usd": "free", "usage": {"input_tokens": true}}',
        '{"type": "result", "total_cost_usd": NaN}',
        "\x00\x01 binary \udcff",
    ]
    events = [event for line in lines for event in parser.feed(line)]
    texts = [event.value for event in events if event.kind == "text"]
    assert texts == [
        "not json at all\n",
        "[1, 2]\n",
        "42\n",
        "null\n",
        '{"type": "result", "result": "cut mid-li\n',
        "\x00\x01 binary \udcff\n",
    ]
    summary = parser.summary
    assert (summary.cost_usd, summary.input_tokens, summary.result) == (None, None, None)


def test_match_is_json_typed() -> None:
    preset = PresetSpec.model_validate(
        {
            "output": "jsonl",
            "events": [
                {"match": {"ok": True}, "text": "a"},
                {"match": {"n": 1}, "text": "b"},
                {"match": {"s": "1"}, "text": "c"},
            ],
        }
    )
    parser = StreamParser(preset)
    assert parser.feed('{"ok": 1, "n": true, "s": 1, "a": "x", "b": "y", "c": "z"}') == []
    assert [event.value for event in parser.feed('{"ok": true, "a": "x"}')] == ["x\n"]
    assert [event.value for event in parser.feed('{"n": 1.0, "b": "y"}')] == ["y\n"]
    assert [event.value for event in parser.feed('{"s": "1", "c": "z"}')] == ["z\n"]


def test_usage_is_summed_and_the_last_result_and_session_win() -> None:
    preset = PresetSpec.model_validate(
        {
            "output": "jsonl",
            "events": [
                {
                    "match": {"type": "turn"},
                    "session": "id",
                    "result": "answer",
                    "cost_usd": "cost",
                    "input_tokens": "in",
                    "output_tokens": "out",
                }
            ],
        }
    )
    parser = StreamParser(preset)
    parser.feed('{"type": "turn", "id": "a", "answer": "first", "cost": 0.5, "in": 10, "out": 1}')
    parser.feed('{"type": "turn", "id": "b", "answer": "second", "cost": 0.25, "in": 5}')
    summary = parser.summary
    assert (summary.session_id, summary.result) == ("b", "second")
    assert summary.cost_usd == pytest.approx(0.75)
    assert (summary.input_tokens, summary.output_tokens) == (15, 1)


def test_text_is_capped_but_still_emitted() -> None:
    parser = StreamParser(load_presets()["generic"], max_text=10)
    events = parser.feed("0123456789abcdef\n")
    assert events == [CliEvent(kind="text", value="0123456789abcdef\n")]
    parser.feed("more")
    assert parser.summary.text == "0123456789"
    assert parser.summary.text_truncated
