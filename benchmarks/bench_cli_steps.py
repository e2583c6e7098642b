"""Command-line agent steps: spawn-to-result overhead, and lines/s into the event log.

Overhead: a trivial command (`/bin/true`) as a CLI agent call (`CliAgent.run`: argv
templating, environment, process group, output parsing, result) and as a whole durable
run of one CLI step on SQLite, each against `asyncio.create_subprocess_exec` + `wait()`
in the same process.

Streaming: a run whose one CLI step prints LINES short lines as fast as it can; every line
becomes a `step_output` event persisted in the run's event log. Lines per second from the
run's first event to its last, against `run_process` appending the lines to a list.

Run: python -m benchmarks.bench_cli_steps
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Literal

from agentmill.agents.base import StepRequest
from agentmill.agents.cli.agent import CliAgent, PresetSlots, cli_call
from agentmill.agents.cli.presets import load_presets
from agentmill.agents.cli.process import ProcessSpec, run_process
from agentmill.engine.engine import Engine
from agentmill.settings import Settings
from agentmill.spec.loader import load_project_text
from agentmill.spec.models import AgentSpec
from benchmarks._common import execution_time, row, sqlite_settings

RUNS = 200
ENGINE_RUNS = 30
LINES = 100_000
TRUE = "/bin/true"
WORKDIR = tempfile.gettempdir()
PRINTER = f"import sys; sys.stdout.write(''.join(f'line {{n}}\\n' for n in range({LINES})))"


class _Silent:
    async def emit_text(self, text: str) -> None:
        return None


async def _bare() -> None:
    proc = await asyncio.create_subprocess_exec(TRUE, env={})
    await proc.wait()


def _cli_agent(settings: Settings) -> CliAgent:
    spec = AgentSpec(runtime="cli", command=[TRUE], workdir=WORKDIR, env=[])
    call = cli_call(spec, presets=load_presets(), base_dir=WORKDIR, settings=settings)
    return CliAgent(call, slots=PresetSlots())


async def _times(run: Any, count: int) -> list[float]:
    for _ in range(5):
        await run()  # warm-up
    times: list[float] = []
    for _ in range(count):
        start = time.perf_counter()
        await run()
        times.append(time.perf_counter() - start)
    return times


def _print(name: str, times: list[float], floor: float) -> float:
    median = statistics.median(times)
    p95 = statistics.quantiles(times, n=20)[-1]
    print(
        row(
            name,
            f"{median * 1000:.2f} ms",
            f"{p95 * 1000:.2f} ms",
            f"{(median - floor) * 1000:+.2f} ms",
        )
    )
    return median


def _project(command: str, *, where: str = f"workdir: {WORKDIR}") -> Any:
    text = f"""
agents:
  tool: {{runtime: cli, command: {command}, {where}, env: [], max_output: 16MB}}
workflows:
  w:
    steps:
      - {{id: s, agent: tool, prompt: go}}
"""
    return load_project_text(text, "bench.yaml").spec


async def _overhead(engine: Engine, settings: Settings) -> None:
    print(f"\n`{TRUE}`: spawn to result ({RUNS} calls; {ENGINE_RUNS} runs on SQLite)\n")
    print("| variant | median | p95 | median - bare |")
    print("| --- | --- | --- | --- |")
    bare = await _times(_bare, RUNS)
    floor = _print("bare `create_subprocess_exec` + `wait()`", bare, statistics.median(bare))
    agent = _cli_agent(settings)
    request = StepRequest(run_id="bench", step_id="s", prompt="go")

    async def one_call() -> None:
        await agent.run(request, _Silent())

    _print("CLI agent call (`CliAgent.run`)", await _times(one_call, RUNS), floor)
    project = _project(f"[{TRUE}]")
    runs = [await execution_time(engine, project, {}) for _ in range(ENGINE_RUNS)]
    _print("durable run of one CLI step (first to last event)", runs, floor)
    project = _project(f"[{TRUE}]", where=f"repo: {_repository()}")
    runs = [await execution_time(engine, project, {}) for _ in range(ENGINE_RUNS)]
    _print("the same in a git worktree (add, diff, commit, remove)", runs, floor)


def _repository() -> str:
    """A git repository with one commit, for worktrees."""
    path = tempfile.mkdtemp(prefix="agentmill-bench-repo-")
    env = {"PATH": "/usr/bin:/bin", "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1"}
    commands = [
        ["git", "init", "-q"],
        ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-q",
         "--allow-empty", "-m", "init"],
    ]  # fmt: skip
    for command in commands:
        subprocess.run(command, cwd=path, env=env, check=True)
    return path


async def _floor_lines() -> float:
    lines: list[str] = []

    async def on_line(stream: Literal["stdout", "stderr"], line: str) -> None:
        lines.append(line)

    spec = ProcessSpec(
        argv=(sys.executable, "-c", PRINTER), env={}, cwd=WORKDIR, max_output=64 << 20
    )
    start = time.perf_counter()
    await run_process(spec, on_line)
    assert len(lines) == LINES
    return time.perf_counter() - start


async def _streaming(engine: Engine) -> None:
    print(f"\nA CLI step printing {LINES:,} lines (median of 3, child start-up included)\n")
    print("| into | seconds | lines/s |")
    print("| --- | --- | --- |")
    floor = statistics.median([await _floor_lines() for _ in range(3)])
    print(row("a list (`run_process` + `on_line`)", f"{floor:.3f}", f"{LINES / floor:,.0f}"))
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as script:
        script.write(PRINTER)
    project = _project(f'["{sys.executable}", "{script.name}"]')
    seconds: list[float] = []
    for _ in range(3):
        seconds.append(await execution_time(engine, project, {}))
    median = statistics.median(seconds)
    run_id = (await engine.store.list_runs(limit=1))[0].id
    stored = [e for e in await engine.store.events(run_id) if e.kind == "step_output"]
    lines = sum(str(e.data["text"]).count("\n") for e in stored)
    assert lines == LINES, lines
    print(
        row(
            f"the run's event log (SQLite; {len(stored)} events of whole lines)",
            f"{median:.3f}",
            f"{LINES / median:,.0f}",
        )
    )


async def _main() -> None:
    with sqlite_settings() as settings:
        engine = Engine(settings)
        await engine.start()
        try:
            await _overhead(engine, settings)
            await _streaming(engine)
        finally:
            await engine.stop()


def main() -> None:
    asyncio.run(_main())


if __name__ == "__main__":
    main()
