"""Command-line agents as workflow steps, on a real engine with real processes and git."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from agentmill.engine.engine import Engine
from agentmill.spec.loader import load_project_text
from agentmill.store import RunStatus, StepRecord
from tests.cli_agents.conftest import fake_script
from tests.cli_agents.gitrepo import git
from tests.cli_agents.procs import marked, new_marker

PYTHON = sys.executable


async def _run(engine: Engine, config: str, workflow: str = "w") -> tuple[Any, dict[str, Any]]:
    project = load_project_text(config, "t.yaml").spec
    run = await engine.submit(project, workflow, {})
    final = await asyncio.wait_for(engine.wait(run.id), timeout=60)
    steps = {record.key: record for record in await engine.store.steps(run.id)}
    return final, steps


def _stubborn(marker: str, workdir: Path, extra: str = "") -> str:
    """A workflow whose one step runs a tool that ignores SIGTERM, as do its children."""
    return f"""
agents:
  stuck:
    runtime: cli
    command: ["{PYTHON}", "{fake_script("stubborn")}", "--marker={marker}"]
    workdir: {workdir}
    grace: 0.3s
    {extra}
workflows:
  w:
    steps:
      - {{id: s, agent: stuck, prompt: go}}
"""


def _diff_files(record: StepRecord) -> list[str]:
    return list((record.details or {})["diff"]["files"])


def _fix_then_review(repo: Path, workdir: Path) -> str:
    """Claude edits in a worktree; a script shows what it is given: the diff on stdin."""
    return f"""
agents:
  coder:
    runtime: cli
    preset: claude
    env: [PATH, FAKE_CLI_WRITE]
    repo: {repo}
  reader:
    runtime: cli
    command: ["{PYTHON}", "{fake_script("show_env")}"]
    stdin: "{{{{ prompt }}}}"
    workdir: {workdir}
    env: [LC_ALL]
workflows:
  w:
    steps:
      - {{id: fix, agent: coder, prompt: "add notes"}}
      - {{id: review, agent: reader, needs: [fix], prompt: "Review:\\n{{{{ steps.fix.diff }}}}"}}
"""


async def test_a_claude_step_in_a_worktree_feeds_its_diff_to_the_next_step(
    sqlite_engine: Engine,
    fake_bin: Path,
    repo: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAKE_CLI_WRITE", "notes.txt")
    monkeypatch.setenv("NOT_GRANTED", "secret-value")
    monkeypatch.setenv("LC_ALL", "C.UTF-8")  # granted; else Python's locale coercion adds one
    final, steps = await _run(sqlite_engine, _fix_then_review(repo, tmp_path))
    assert final.status is RunStatus.SUCCEEDED, final.error
    fix = steps["fix"]
    assert fix.output == "Done: add notes"
    assert fix.cost_usd == pytest.approx(0.0123)
    assert fix.usage == {
        "input_tokens": 1200,
        "output_tokens": 345,
        "cache_read_tokens": 0,
        "requests": 1,
    }
    cli = (fix.details or {})["cli"]
    assert cli["exit_code"] == 0
    assert cli["tools"] == 1
    assert cli["session_id"]
    assert _diff_files(fix) == ["notes.txt"]

    seen = json.loads(steps["review"].output)
    assert "notes.txt" in seen["stdin"]
    assert "+written by fake claude" in seen["stdin"]
    run_id = final.id
    assert seen["env"] == {
        "LC_ALL": "C.UTF-8",
        "AGENTMILL_RUN_ID": run_id,
        "AGENTMILL_STEP_ID": "review",
        "AGENTMILL_IDEMPOTENCY_KEY": f"{run_id}:review",
    }

    branch = cli["branch"]
    assert "notes.txt" in git(repo, "show", "--stat", branch)
    assert not os.path.exists(cli["worktree"])  # removed on success; the branch keeps the work
    kinds = [event.kind for event in await sqlite_engine.store.events(run_id)]
    assert {"step_session", "step_tool", "step_output"} <= set(kinds)


async def test_parallel_steps_in_separate_worktrees_produce_separate_diffs(
    sqlite_engine: Engine, repo: Path
) -> None:
    config = f"""
agents:
  writer:
    runtime: cli
    command: ["{PYTHON}", "{fake_script("write_file")}", "{{{{ prompt }}}}", "0.3"]
    env: [AGENTMILL_UNUSED]
    repo: {repo}
workflows:
  w:
    steps:
      - {{id: a, agent: writer, prompt: a.txt}}
      - {{id: b, agent: writer, prompt: b.txt}}
      - {{id: c, agent: writer, prompt: c.txt}}
"""
    final, steps = await _run(sqlite_engine, config)
    assert final.status is RunStatus.SUCCEEDED, final.error
    for key in ("a", "b", "c"):
        assert _diff_files(steps[key]) == [f"{key}.txt"]
        assert steps[key].output == f"wrote {key}.txt\n"
        branch = (steps[key].details or {})["cli"]["branch"]
        assert git(repo, "show", f"{branch}:{key}.txt") == f"{key}.txt written by step {key}\n"
    assert git(repo, "status", "--porcelain") == ""  # the main checkout is untouched


async def test_a_failing_command_fails_the_step_with_its_stderr_and_keeps_the_worktree(
    sqlite_engine: Engine, repo: Path
) -> None:
    config = f"""
agents:
  broken:
    runtime: cli
    command: ["{PYTHON}", "{fake_script("fail")}"]
    repo: {repo}
workflows:
  w:
    steps:
      - {{id: s, agent: broken, prompt: go}}
"""
    final, steps = await _run(sqlite_engine, config)
    assert final.status is RunStatus.FAILED
    error = steps["s"].error or ""
    assert "exited with status 3" in error
    assert "last lines of stderr" in error
    saved = (steps["s"].details or {})["saved"]
    assert os.path.isdir(saved["worktree"])  # kept on failure, for a look or a retry


async def test_cancelling_a_run_kills_the_whole_process_group(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    marker = new_marker()
    project = load_project_text(_stubborn(marker, tmp_path), "t.yaml").spec
    run = await sqlite_engine.submit(project, "w", {})
    for _ in range(200):
        if len(marked(marker)) >= 3:
            break
        await asyncio.sleep(0.05)
    assert marked(marker), "the tool never started"
    await sqlite_engine.cancel(run.id)
    final = await asyncio.wait_for(sqlite_engine.wait(run.id), timeout=30)
    assert final.status is RunStatus.CANCELLED
    assert marked(marker) == []


async def test_a_preset_concurrency_cap_holds_across_steps(
    sqlite_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "times.jsonl"
    monkeypatch.setenv("FAKE_CLI_LOG", str(log))
    config = f"""
presets:
  writer:
    command: ["{PYTHON}", "{fake_script("write_file")}", "{{{{ prompt }}}}", "0.2"]
    concurrency: 1
    env: [FAKE_CLI_LOG]
agents:
  w1: {{runtime: cli, preset: writer, workdir: {tmp_path}}}
workflows:
  w:
    steps:
      - {{id: many, agent: w1, foreach: "{{{{ ['x1', 'x2', 'x3'] }}}}", prompt: "{{{{ item }}}}"}}
"""
    final, _ = await _run(sqlite_engine, config)
    assert final.status is RunStatus.SUCCEEDED, final.error
    spans = sorted(
        (entry["start"], entry["end"]) for entry in map(json.loads, log.read_text().splitlines())
    )
    assert len(spans) == 3
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end, "two processes of a preset capped at 1 ran at once"


async def test_a_step_past_its_timeout_leaves_no_process_behind(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    marker = new_marker()
    final, steps = await _run(sqlite_engine, _stubborn(marker, tmp_path, "timeout: 1s"))
    assert final.status is RunStatus.FAILED
    assert "timed out after 1s" in (steps["s"].error or "")
    assert marked(marker) == []


BIG_SESSION = """
import json
session = "s-123"
print(json.dumps({"type": "system", "subtype": "init", "session_id": session}))
for n in range(30):
    text = {"type": "text", "text": f"part {n} " + "x" * 5000}
    message = {"content": [text]}
    print(json.dumps({"type": "assistant", "message": message, "session_id": session}))
tool = {"type": "tool_use", "name": "Read", "input": {"data": "y" * 200_000}}
print(json.dumps({"type": "assistant", "message": {"content": [tool]}, "session_id": session}))
usage = {"input_tokens": 7, "output_tokens": 9}
print(json.dumps({"type": "result", "subtype": "success", "is_error": False, "result": "all done",
                  "session_id": session, "total_cost_usd": 0.5, "usage": usage}))
"""


def _claude_script(script: Path, workdir: Path, max_output: str) -> str:
    """A workflow running `script` as a tool that speaks Claude Code's stream-json."""
    return f"""
agents:
  big:
    runtime: cli
    preset: claude
    command: ["{PYTHON}", "{script}"]
    workdir: {workdir}
    max_output: {max_output}
workflows:
  w:
    steps:
      - {{id: s, agent: big, prompt: go}}
"""


async def test_the_result_after_max_output_still_counts_and_long_json_lines_parse(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    script = tmp_path / "big.py"
    script.write_text(BIG_SESSION)
    final, steps = await _run(sqlite_engine, _claude_script(script, tmp_path, "20KB"))
    assert final.status is RunStatus.SUCCEEDED, final.error
    step = steps["s"]
    assert step.output == "all done"
    assert step.cost_usd == pytest.approx(0.5)
    cli = (step.details or {})["cli"]
    assert cli["truncated"] is True
    assert cli["tools"] == 1  # from a 200 KB line, past the cap
    assert cli["session_id"] == "s-123"


async def test_a_result_line_across_max_output_is_still_parsed(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    script = tmp_path / "crossing.py"
    script.write_text(
        "import json\n"
        "print(json.dumps({'type': 'system', 'subtype': 'init', 'session_id': 's-9'}))\n"
        "print(json.dumps({'type': 'result', 'result': 'done', 'total_cost_usd': 0.25,"
        " 'session_id': 's-9', 'padding': 'p' * 3000}))\n"
    )
    final, steps = await _run(sqlite_engine, _claude_script(script, tmp_path, "1KB"))
    assert final.status is RunStatus.SUCCEEDED, final.error
    assert steps["s"].output == "done"
    assert steps["s"].cost_usd == pytest.approx(0.25)


async def test_a_resumed_session_that_fails_is_not_resumed_again(
    sqlite_engine: Engine, fake_bin: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_CLI_LOG", str(log))
    monkeypatch.setenv("FAKE_CLI_ERROR", "session is broken")
    config = f"""
agents:
  coder:
    runtime: cli
    preset: claude
    env: [PATH, FAKE_CLI_LOG, FAKE_CLI_ERROR]
    workdir: {tmp_path}
    retries: 2
workflows:
  w:
    steps:
      - {{id: s, agent: coder, prompt: go, backoff: 10ms}}
"""
    final, steps = await _run(sqlite_engine, config)
    assert final.status is RunStatus.FAILED
    assert "session is broken" in (steps["s"].error or "")
    resumed = [json.loads(line)["resumed"] for line in log.read_text().splitlines()]
    # Attempt 1: fresh. Attempts 2 and 3: resume the session, fail, start over at once.
    assert resumed[0] is None
    assert resumed[1] is not None
    assert resumed[2] is None
    assert resumed[3] is not None
    assert resumed[3] != resumed[1]  # the session of the fresh start, not the failed one
    assert resumed[4] is None
    assert len(resumed) == 5


async def test_granted_credentials_never_reach_the_event_log_or_the_error(
    sqlite_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "sk-test-0123456789abcdef"
    monkeypatch.setenv("MY_API_KEY", secret)
    code = (
        "import os, sys; key = os.environ['MY_API_KEY']; print('using', key);"
        " print('auth failed for', key, file=sys.stderr); sys.exit(2)"
    )
    config = f"""
agents:
  leaky:
    runtime: cli
    command: ["{PYTHON}", "-c", "{code}"]
    env: [MY_API_KEY]
    workdir: {tmp_path}
  fine:
    runtime: cli
    command: ["{PYTHON}", "-c", "import os; print('fine with', os.environ['MY_API_KEY'])"]
    env: [MY_API_KEY]
    workdir: {tmp_path}
workflows:
  w:
    steps:
      - {{id: s, agent: leaky, prompt: go}}
      - {{id: t, agent: fine, prompt: go}}
"""
    final, steps = await _run(sqlite_engine, config)
    assert final.status is RunStatus.FAILED
    assert steps["t"].output == "fine with [redacted]\n"
    assert secret not in (steps["s"].error or "")
    assert "auth failed for [redacted]" in (steps["s"].error or "")
    events = await sqlite_engine.store.events(final.id)
    texts = json.dumps([event.data for event in events])
    assert secret not in texts
    assert "using [redacted]" in texts


async def test_a_failed_step_records_its_cli_details(sqlite_engine: Engine, repo: Path) -> None:
    code = (
        "import sys; open('half.txt', 'w').write('half done');"
        " print('no key found', file=sys.stderr); sys.exit(3)"
    )
    config = f"""
agents:
  broken:
    runtime: cli
    command: ["{PYTHON}", "-c", "{code}"]
    repo: {repo}
    retries: 1
workflows:
  w:
    steps:
      - {{id: s, agent: broken, prompt: go, backoff: 10ms}}
"""
    final, steps = await _run(sqlite_engine, config)
    assert final.status is RunStatus.FAILED
    cli = (steps["s"].details or {})["cli"]
    assert cli["exit_code"] == 3
    assert cli["timed_out"] is False
    assert cli["stderr_tail"] == ["no key found"]
    assert cli["files"] == ["half.txt"]
    assert "limit" not in cli
    events = await sqlite_engine.store.events(final.id)
    for kind in ("step_retrying", "step_failed"):  # every failed attempt says how it ended
        (event,) = [e for e in events if e.kind == kind]
        assert event.data["details"]["cli"]["exit_code"] == 3, kind


async def test_a_timed_out_step_records_its_cli_details(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    marker = new_marker()
    final, steps = await _run(sqlite_engine, _stubborn(marker, tmp_path, "timeout: 1s"))
    assert final.status is RunStatus.FAILED
    cli = (steps["s"].details or {})["cli"]
    assert cli["timed_out"] is True
    assert cli["limit"] == "timeout"
    assert cli["exit_code"] == -9  # it ignores SIGTERM: killed after the grace
    assert cli["signal"] == "SIGKILL"
    assert cli["preset"] == "generic"


async def test_aider_reaches_a_self_hosted_model_and_its_history_stays_out_of_the_diff(
    sqlite_engine: Engine,
    fake_bin: Path,
    repo: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_CLI_LOG", str(log))
    monkeypatch.setenv("FAKE_CLI_WRITE", "hello.py")
    monkeypatch.setenv("OPENAI_API_BASE", "http://127.0.0.1:11434/v1")
    config = f"""
agents:
  coder:
    runtime: cli
    preset: aider
    env: [PATH, HOME, OPENAI_API_BASE, FAKE_CLI_LOG, FAKE_CLI_WRITE]
    repo: {repo}
workflows:
  w:
    steps:
      - {{id: fix, agent: coder, prompt: "write hello"}}
"""
    final, steps = await _run(sqlite_engine, config)
    assert final.status is RunStatus.SUCCEEDED, final.error
    assert _diff_files(steps["fix"]) == ["hello.py"]
    branch = (steps["fix"].details or {})["cli"]["branch"]
    assert git(repo, "ls-tree", "-r", "--name-only", branch).split() == ["README.md", "hello.py"]
    assert json.loads(log.read_text())["api_base"] == "http://127.0.0.1:11434/v1"


async def test_a_grandchild_that_left_the_session_ends_with_the_step(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    marker = f"--marker={new_marker()}"
    config = f"""
agents:
  leaky:
    runtime: cli
    command: ["{PYTHON}", "{fake_script("escape")}", orphan, "{marker}"]
    workdir: {tmp_path}
    grace: 0.3s
workflows:
  w:
    steps:
      - {{id: s, agent: leaky, prompt: go}}
"""
    final, steps = await _run(sqlite_engine, config)
    assert final.status is RunStatus.SUCCEEDED, final.error
    escaped = int(str(steps["s"].output).split()[1])
    assert marked(marker) == []
    assert not os.path.exists(f"/proc/{escaped}"), "alive, or a zombie of the worker"


async def test_a_failed_step_leads_with_the_tools_own_error(
    sqlite_engine: Engine, fake_bin: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_CLI_ERROR", "401 Unauthorized: Missing bearer authentication")
    code = (
        "import sys; print('starting', file=sys.stderr);"
        " print('Error: no API key', file=sys.stderr); print('bye', file=sys.stderr); sys.exit(1)"
    )
    config = f"""
agents:
  coder:
    runtime: cli
    preset: codex
    env: [PATH, FAKE_CLI_ERROR]
    workdir: {tmp_path}
  plain:
    runtime: cli
    command: ["{PYTHON}", "-c", "{code}"]
    workdir: {tmp_path}
workflows:
  w:
    steps:
      - {{id: s, agent: coder, prompt: go}}
      - {{id: t, agent: plain, prompt: go}}
"""
    final, steps = await _run(sqlite_engine, config)
    assert final.status is RunStatus.FAILED
    assert (steps["s"].error or "").startswith(
        "step 's' failed: codex: 401 Unauthorized: Missing bearer authentication"
        " (exited with status 1)"
    ), steps["s"].error
    # Without a reported error, the stderr line that says error leads.
    assert (steps["t"].error or "").startswith(
        f"step 't' failed: {os.path.basename(PYTHON)}: Error: no API key (exited with status 1)"
    ), steps["t"].error
