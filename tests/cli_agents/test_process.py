"""`run_process` with real child processes: containment, limits, streaming, exact argv/env.

Every test that kills something checks afterwards, by marker and by session id, that no
process of the run is left, live or zombie.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import sys
import uuid
from pathlib import Path
from typing import Any, Literal

import pytest

from agentmill.agents.cli.process import (
    Limits,
    MissingBinary,
    ProcessResult,
    ProcessSpec,
    run_process,
)
from agentmill.errors import MissingDependencyError, UserError
from tests.cli_agents.procs import marked, session, until, zombie_children

FAKE = Path(__file__).resolve().parent.parent / "fixtures" / "fake_cli"
GRACE = 0.3
ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LC_ALL": "C.UTF-8"}

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc")


class Lines:
    """An `on_line` that records what it is given."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    async def __call__(self, stream: Literal["stdout", "stderr"], line: str) -> None:
        self.items.append((stream, line))

    def of(self, stream: str) -> list[str]:
        return [line for name, line in self.items if name == stream]


def _spec(script: str, *args: str, **kwargs: Any) -> ProcessSpec:
    kwargs.setdefault("grace", GRACE)
    kwargs.setdefault("env", ENV)
    kwargs.setdefault("cwd", str(FAKE))
    return ProcessSpec(argv=(sys.executable, str(FAKE / script), *args), **kwargs)


def _marker() -> str:
    return f"--marker={uuid.uuid4()}"


def _assert_all_gone(marker: str, sids: set[int]) -> None:
    assert marked(marker) == []
    for sid in sids:
        assert session(sid) == [], f"session {sid} still has processes (or zombies)"
    assert [z for z in zombie_children() if z.sid in sids] == []


def _kill_and_reap(marker: str) -> None:
    for proc in marked(marker):
        os.kill(proc.pid, signal.SIGKILL)
        if proc.ppid == os.getpid():  # re-parented to us, the subreaper
            os.waitpid(proc.pid, 0)


def _sids(marker: str) -> set[int]:
    return {os.getsid(p.pid) for p in marked(marker)}


async def _show_env(tmp_path: Path, *args: str, **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("cwd", str(tmp_path))
    result = await run_process(_spec("show_env.py", *args, **kwargs), Lines())
    assert result.exit_code == 0, result.stderr_tail
    return json.loads(result.stdout)


# -- timeouts and cancellation: the whole session goes, nothing is left --------------------


async def test_timeout_terminates_a_hanging_child() -> None:
    marker = _marker()
    result = await run_process(_spec("hang.py", marker, timeout=0.5), Lines())
    assert result.limit_hit == "timeout"
    assert result.exit_code == -signal.SIGTERM
    assert 0.5 <= result.duration < 3
    _assert_all_gone(marker, {result.pid})


async def test_timeout_kills_a_tree_that_ignores_sigterm() -> None:
    marker = _marker()
    lines = Lines()
    result = await run_process(_spec("stubborn.py", marker, timeout=2.0), lines)
    ready = ["child ready 0", "child ready 1", "child ready 2", "parent ready"]
    assert sorted(lines.of("stdout")) == ready
    assert result.limit_hit == "timeout"
    assert result.exit_code == -signal.SIGKILL  # SIGTERM was ignored, the grace ran out
    _assert_all_gone(marker, {result.pid})


@pytest.mark.parametrize(
    ("script", "args", "started"),
    [
        ("hang.py", (), 1),
        ("stubborn.py", (), 4),
        ("fork_bomb.py", ("--max=60",), 61),
    ],
)
async def test_cancel_kills_and_reaps_everything(
    script: str, args: tuple[str, ...], started: int
) -> None:
    marker = _marker()
    task = asyncio.create_task(run_process(_spec(script, marker, *args), Lines()))
    await until(lambda: len(marked(marker)) >= started)
    sids = _sids(marker)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    _assert_all_gone(marker, sids)


async def test_an_error_in_on_line_kills_the_child_and_propagates() -> None:
    marker = _marker()

    async def broken(stream: str, line: str) -> None:
        raise RuntimeError("sink failed")

    with pytest.raises(RuntimeError, match="sink failed"):
        await run_process(_spec("hang.py", marker), broken)
    assert marked(marker) == []


async def test_leftover_children_are_killed_when_the_leader_exits() -> None:
    marker = _marker()
    code = "import subprocess, sys; subprocess.Popen([sys.executable, sys.argv[1], sys.argv[2]])"
    spec = ProcessSpec(
        argv=(sys.executable, "-c", code, str(FAKE / "hang.py"), marker),
        env=ENV,
        cwd=str(FAKE),
        grace=GRACE,
    )
    result = await run_process(spec, Lines())
    assert result.exit_code == 0
    assert result.limit_hit is None
    _assert_all_gone(marker, {result.pid})


async def test_a_process_that_escaped_the_session_cannot_hold_the_run() -> None:
    """A setsid() daemon keeping stdout open: the run still ends, soon after the leader."""
    marker = _marker()
    code = (
        "import os, sys, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    os.execv(sys.executable, [sys.executable, sys.argv[1], sys.argv[2]])\n"
        "time.sleep(0.2)\n"
    )
    spec = ProcessSpec(
        argv=(sys.executable, "-c", code, str(FAKE / "hang.py"), marker),
        env=ENV,
        cwd=str(FAKE),
        grace=GRACE,
        timeout=20,
    )
    try:
        result = await run_process(spec, Lines())
        assert result.limit_hit is None
        assert result.exit_code == 0
        assert result.duration < 5
    finally:
        _kill_and_reap(marker)


async def test_an_escaped_process_that_keeps_writing_cannot_hold_the_run() -> None:
    """A setsid() child writing without pause: reading stops a bounded time after the end."""
    marker = _marker()
    code = (
        "import os, sys, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    while True:\n"
        "        print('x', sys.argv[1], flush=True)\n"
        "        time.sleep(0.01)\n"
        "time.sleep(0.2)\n"
    )
    spec = ProcessSpec(
        argv=(sys.executable, "-c", code, marker), env=ENV, cwd=str(FAKE), grace=GRACE, timeout=20
    )
    try:
        result = await run_process(spec, Lines())
        assert result.exit_code == 0
        assert result.duration < 5
    finally:
        _kill_and_reap(marker)


async def test_an_argument_too_long_for_linux_is_a_user_error_naming_the_fix() -> None:
    spec = ProcessSpec(argv=("/bin/true", "x" * 200_000), env=ENV, cwd=str(FAKE))
    with pytest.raises(UserError, match=r"arguments or environment are too long.*on stdin"):
        await run_process(spec, Lines())


async def test_lines_past_the_cap_are_still_given_for_parsing() -> None:
    batches: list[tuple[str, list[str], bool]] = []

    async def on_lines(
        stream: Literal["stdout", "stderr"], lines: list[str], dropped: bool
    ) -> None:
        batches.append((stream, lines, dropped))

    code = "print('a' * 50); print('b' * 50); print('{\"last\": true}')"
    spec = ProcessSpec(argv=(sys.executable, "-c", code), env=ENV, cwd=str(FAKE), max_output=60)
    result = await run_process(spec, on_lines=on_lines)
    assert result.truncated
    kept = [line for _, lines, dropped in batches if not dropped for line in lines]
    past = [line for _, lines, dropped in batches if dropped for line in lines]
    assert kept[-1] == "[agentmill: output truncated at 60 bytes]"
    assert past[-1] == '{"last": true}'


# -- limits ----------------------------------------------------------------------------------


async def test_fork_bomb_is_stopped_by_the_process_limit() -> None:
    marker = _marker()
    spec = _spec("fork_bomb.py", marker, "--max=300", limits=Limits(processes=20), timeout=20)
    result = await run_process(spec, Lines())
    assert result.limit_hit == "processes"  # the watchdog's, whatever the user
    assert result.duration < 10
    _assert_all_gone(marker, {result.pid})


async def test_cpu_limit_stops_a_busy_loop() -> None:
    spec = ProcessSpec(
        argv=(sys.executable, "-c", "while True: pass"),
        env=ENV,
        cwd=str(FAKE),
        limits=Limits(cpu_seconds=1),
        timeout=30,
        grace=GRACE,
    )
    result = await run_process(spec, Lines())
    assert result.limit_hit == "cpu"
    assert result.exit_code == -signal.SIGXCPU


async def test_memory_limit_is_reported() -> None:
    spec = ProcessSpec(
        argv=(sys.executable, "-c", "bytearray(2_000_000_000)"),
        env=ENV,
        cwd=str(FAKE),
        limits=Limits(memory_bytes=400_000_000),
        timeout=30,
        grace=GRACE,
    )
    result = await run_process(spec, Lines())
    assert result.exit_code == 1
    assert result.limit_hit == "memory"
    assert result.stderr_tail[-1] == "MemoryError"


async def test_limits_are_applied_to_the_command_itself(tmp_path: Path) -> None:
    """prlimit execs the command: same pid, which leads its own session and group."""
    limits = Limits(open_files=64, cpu_seconds=30, memory_bytes=1 << 31, processes=50)
    result = await run_process(_spec("show_env.py", cwd=str(tmp_path), limits=limits), Lines())
    shown = json.loads(result.stdout)
    assert shown["pid"] == result.pid
    assert shown["limits"]["nofile"] == [64, 64]
    assert shown["limits"]["cpu"] == [30, 31]
    assert shown["limits"]["as"] == [1 << 31, 1 << 31]
    # `processes` is the watchdog's: RLIMIT_NPROC would count every process of the user.
    assert shown["limits"]["nproc"] == list(resource.getrlimit(resource.RLIMIT_NPROC))
    assert shown["pid"] == shown["sid"] == shown["pgid"]


async def test_without_limits_the_child_still_leads_its_own_session(tmp_path: Path) -> None:
    result = await run_process(_spec("show_env.py", cwd=str(tmp_path)), Lines())
    shown = json.loads(result.stdout)
    assert result.pid == shown["pid"] == shown["sid"] == shown["pgid"]


# -- output ---------------------------------------------------------------------------------


@pytest.mark.parametrize("one_line", [False, True], ids=["lines", "one-long-line"])
async def test_a_flood_of_output_is_capped_and_drained(one_line: bool) -> None:
    marker = "[agentmill: output truncated at 1000000 bytes]"
    lines = Lines()
    args = ["100", *(["--one-line"] if one_line else [])]
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = await run_process(_spec("flood.py", *args, timeout=60), lines)
    rss_growth_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    assert result.exit_code == 0
    assert result.truncated
    assert result.stdout.endswith(marker)
    assert len(result.stdout.encode()) <= 1_000_000 + len(marker) + 1
    streamed = lines.of("stdout")
    assert streamed[-1] == marker
    if one_line:  # the line as far as the budget went (pieces would be of 4 MiB)
        assert sum(len(line) for line in streamed[:-1]) == 1_000_000
        assert max(len(line) for line in streamed) <= 4 * 1024 * 1024
    else:  # 15,625 lines of 64 bytes fill the budget exactly
        assert streamed[:-1] == ["y" * 63] * 15_625
    assert rss_growth_mib < 50


async def test_output_exactly_at_the_cap_is_not_truncated() -> None:
    spec = ProcessSpec(
        argv=(sys.executable, "-c", "print('x' * 9)"), env=ENV, cwd=str(FAKE), max_output=10
    )
    result = await run_process(spec, Lines())
    assert (result.stdout, result.truncated) == ("xxxxxxxxx\n", False)


async def test_failure_exit_code_and_stderr_tail() -> None:
    lines = Lines()
    result = await run_process(_spec("fail.py"), lines)
    assert result.exit_code == 3
    assert result.limit_hit is None
    assert result.stderr_tail == tuple(f"error line {n}" for n in range(30, 50))
    assert lines.of("stderr") == [f"error line {n}" for n in range(50)]
    assert result.stdout == ""


# -- exactly what was given: argv, env, stdin ------------------------------------------------


async def test_arguments_arrive_literally(tmp_path: Path) -> None:
    args = ("; rm -rf ~ #", "$(id)", "--help", "`id`", "a b", "", "*")
    shown = await _show_env(tmp_path, *args)
    assert shown["argv"] == list(args)
    assert shown["cwd"] == str(tmp_path)


async def test_environment_is_exactly_the_given_one(tmp_path: Path) -> None:
    env = {**ENV, "AGENTMILL_TEST_VALUE": "x y $(id)"}
    shown = await _show_env(tmp_path, env=env)
    assert shown["env"] == env


async def test_stdin_is_delivered_and_closed(tmp_path: Path) -> None:
    text = "prompt line\n" * 200_000  # 2.4 MB: far more than a pipe holds
    shown = await _show_env(tmp_path, stdin=text.encode(), max_output=8_000_000)
    assert shown["stdin"] == text


async def test_large_stdin_to_a_child_that_writes_first() -> None:
    code = (
        "import sys; sys.stdout.write('x' * 3_000_000 + '\\n'); sys.stdout.flush();"
        " print(len(sys.stdin.buffer.read()))"
    )
    spec = ProcessSpec(
        argv=(sys.executable, "-c", code),
        env=ENV,
        cwd=str(FAKE),
        stdin=b"z" * 3_000_000,
        max_output=8_000_000,
        timeout=30,
    )
    result = await run_process(spec, Lines())
    assert result.stdout.splitlines()[-1] == "3000000"


async def test_a_child_that_does_not_read_stdin_is_not_an_error() -> None:
    spec = ProcessSpec(
        argv=(sys.executable, "-c", "print('done')"),
        env=ENV,
        cwd=str(FAKE),
        stdin=b"z" * 5_000_000,
    )
    result: ProcessResult = await run_process(spec, Lines())
    assert (result.exit_code, result.stdout) == (0, "done\n")


async def test_missing_binary_names_it() -> None:
    spec = ProcessSpec(argv=("agentmill-no-such-agent", "--help"), env=ENV, cwd=str(FAKE))
    with pytest.raises(MissingBinary, match="agentmill-no-such-agent") as caught:
        await run_process(spec, Lines())
    assert isinstance(caught.value, MissingDependencyError)
    assert "install it" in str(caught.value)


async def test_bare_name_is_found_on_the_child_path(tmp_path: Path) -> None:
    tool = tmp_path / "bin" / "my-agent"
    tool.parent.mkdir()
    tool.write_text(f"#!{sys.executable}\nprint('hello from my-agent')\n")
    tool.chmod(0o755)
    env = {**ENV, "PATH": f"{tool.parent}:{ENV['PATH']}"}
    spec = ProcessSpec(argv=("my-agent",), env=env, cwd=str(tmp_path))
    result = await run_process(spec, Lines())
    assert result.stdout == "hello from my-agent\n"


@pytest.mark.parametrize("mode", ["orphan", "quiet"])
async def test_a_descendant_that_left_the_session_is_ended_and_reaped(mode: str) -> None:
    """A grandchild calls setsid() and sleeps. `orphan`: its parent exits at once, so it is
    re-parented to the worker while the tool still runs; `quiet`: its parent stays in the
    session and it runs with an empty environment. Either way it ends with the call, and
    leaves no zombie."""
    marker = _marker()
    spec = ProcessSpec(
        argv=(sys.executable, str(FAKE / "escape.py"), mode, marker),
        env={**ENV, "AGENTMILL_IDEMPOTENCY_KEY": f"run-1:{marker}"},
        identity="AGENTMILL_IDEMPOTENCY_KEY",
        cwd=str(FAKE),
        grace=GRACE,
        timeout=20,
    )
    lines = Lines()
    try:
        result = await run_process(spec, lines)
        assert result.exit_code == 0
        (escaped,) = (int(line.split()[1]) for line in lines.of("stdout") if "escaped" in line)
        assert marked(marker) == []
        assert not os.path.exists(f"/proc/{escaped}"), "alive, or a zombie of the worker"
        assert [z for z in zombie_children() if z.sid in (escaped, result.pid)] == []
    finally:
        _kill_and_reap(marker)
