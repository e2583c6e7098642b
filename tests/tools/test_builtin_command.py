"""run_command through the contained process runner: only allowlisted programs, no shell, a
minimal environment, output cut, and a command that hangs killed with its whole session."""

from __future__ import annotations

import os
import shutil
import sys
import textwrap
from pathlib import Path

import pytest

from agentmill.agents.tools.builtins import builtin_toolset
from agentmill.agents.tools.context import ToolCall, executing
from tests.tools.helpers import Outcome, call_tool


async def run(
    workspace: Path | None,
    argv: list[str],
    *,
    allow: list[str],
    limit: float | None = None,
    max_output: int = 64 * 1024,
    stdin: str | None = None,
) -> Outcome:
    toolset = builtin_toolset(
        "run_command", workspace=workspace, allow=allow, timeout=limit, max_output=max_output
    )
    if stdin is None:
        return await call_tool(toolset, "run_command", argv=argv)
    return await call_tool(toolset, "run_command", argv=argv, stdin=stdin)


async def test_an_allowed_program_runs_in_the_workspace(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    listing = await run(tmp_path, ["ls"], allow=["ls", "cat"])
    assert listing == Outcome("return", "exit code: 0\n--- stdout ---\nnotes.txt")
    echoed = await run(tmp_path, ["cat"], allow=["cat"], stdin="from stdin\n")
    assert echoed.text == "exit code: 0\n--- stdout ---\nfrom stdin"


async def test_a_failing_program_reports_its_exit_code_and_stderr(tmp_path: Path) -> None:
    outcome = await run(tmp_path, ["ls", "missing-file"], allow=["ls"])
    assert outcome.kind == "return"
    assert outcome.text.startswith("exit code: 2\n--- stdout ---\n(none)\n--- stderr")
    assert "missing-file" in outcome.text


async def test_a_program_off_the_allowlist_is_refused(tmp_path: Path) -> None:
    victim = tmp_path / "keep.txt"
    victim.write_text("x")
    outcome = await run(tmp_path, ["rm", "keep.txt"], allow=["ls", "cat"])
    assert outcome.kind == "retry"
    assert outcome.text == "program 'rm' is not allowed: this agent may run only ls, cat"
    assert victim.exists()


@pytest.mark.parametrize("program", ["/bin/ls", "./ls", "../bin/ls"])
async def test_a_program_by_path_is_refused_unless_listed_exactly(
    tmp_path: Path, program: str
) -> None:
    outcome = await run(tmp_path, [program], allow=["ls"])
    assert outcome.kind == "retry"
    assert "listed exactly" in outcome.text
    listed = await run(tmp_path, [sys.executable, "-c", "print(6 * 7)"], allow=[sys.executable])
    assert listed.text == "exit code: 0\n--- stdout ---\n42"


async def test_a_program_written_into_the_workspace_never_passes_for_an_allowed_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With `.` on PATH, a `cat` the model wrote into the workspace would shadow the real
    one; relative PATH entries are dropped, so the real one runs."""
    fake = tmp_path / "cat"
    fake.write_text("#!/bin/sh\ntouch planted\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f".:{os.environ['PATH']}")
    outcome = await run(tmp_path, ["cat"], allow=["cat"], stdin="real cat\n")
    assert outcome.text == "exit code: 0\n--- stdout ---\nreal cat"
    assert not (tmp_path / "planted").exists()


async def test_the_environment_is_minimal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-never-passed")
    monkeypatch.setenv("LANG", "C.UTF-8")
    call = ToolCall(
        run_id="r1", step="fix", name="run_command", call_id="c3", idempotency_key="r1/fix/c3"
    )
    with executing(call):
        outcome = await run(tmp_path, ["env"], allow=["env"])
    names = sorted(line.split("=", 1)[0] for line in outcome.text.splitlines()[2:])
    assert names == ["AGENTMILL_IDEMPOTENCY_KEY", "HOME", "LANG", "PATH"]
    assert "AGENTMILL_IDEMPOTENCY_KEY=r1/fix/c3" in outcome.text
    assert "sk-never-passed" not in outcome.text


async def test_output_is_cut_at_the_limit(tmp_path: Path) -> None:
    script = "import sys; sys.stdout.write('y' * 1_000_000)"
    outcome = await run(
        tmp_path, [sys.executable, "-c", script], allow=[sys.executable], max_output=2000
    )
    assert outcome.text.startswith("exit code: 0\n--- stdout ---\n" + "y" * 2000)
    assert "[agentmill: output truncated at 2000 bytes]" in outcome.text
    assert len(outcome.text) < 2200


async def test_a_program_that_hangs_is_killed_with_what_it_started(tmp_path: Path) -> None:
    sleep = shutil.which("sleep")
    assert sleep is not None
    script = textwrap.dedent(
        f"""
        import signal, subprocess, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # only SIGKILL ends it
        child = subprocess.Popen([{sleep!r}, "300"])
        open("child.pid", "w").write(str(child.pid))
        print("started", flush=True)
        time.sleep(300)
        """
    )
    outcome = await run(tmp_path, [sys.executable, "-c", script], allow=[sys.executable], limit=1.0)
    assert outcome.kind == "return"
    assert outcome.text.startswith("killed: still running after the 1s timeout")
    assert "started" in outcome.text
    child = int((tmp_path / "child.pid").read_text())
    assert not Path(f"/proc/{child}").exists()


async def test_without_a_workspace_no_command_runs(tmp_path: Path) -> None:
    outcome = await run(None, ["ls"], allow=["ls"])
    assert outcome.kind == "retry"
    assert "no workspace" in outcome.text


async def test_an_allowed_program_that_is_not_installed_is_a_retry(tmp_path: Path) -> None:
    outcome = await run(tmp_path, ["no-such-program-xyz"], allow=["no-such-program-xyz"])
    assert outcome == Outcome(
        "retry", "program 'no-such-program-xyz' is allowed but not installed on this machine"
    )
