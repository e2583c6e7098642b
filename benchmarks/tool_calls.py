"""Durable overhead per tool call: pydantic-ai's DBOS integration against agentmill's own loop.

A scripted `FunctionModel` makes N sequential tool calls (one per model turn) to a trivial
tool, then answers. Each variant runs the same script; its time per tool call minus the
bare `Agent.run`'s is what durability costs per call (one model request + one tool call):

- bare: pydantic-ai `Agent.run`, nothing recorded (the floor);
- DBOSAgent, model steps: `DBOSAgent.run` (its own DBOS workflow); each model request is a
  DBOS step, the function tool runs in workflow code unrecorded (pydantic-ai's default);
- DBOSAgent, model + tool steps: the same with the tool's body a `@DBOS.step`, so a resume
  repeats no finished tool call either: what agentmill promises;
- DBOSDurability: the capability that replaces the deprecated `DBOSAgent`, with the tool
  as a `@DBOS.step`, run inside our own `@DBOS.workflow`;
- agentmill: a one-step workflow whose agent has the tool, through the real engine.

Each on SQLite (a temp file, WAL) and PostgreSQL (a fresh database). The variants take
turns with the bare run (ROUNDS rounds after a warm-up); the overhead is the median of the
rounds' differences, in wall time and in CPU time of the process (steadier on a busy machine).
Run: python -m benchmarks.tool_calls   (AGENTMILL_BENCH_CALLS=200, AGENTMILL_BENCH_ROUNDS=5)
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
import uuid
import warnings
from collections.abc import Awaitable, Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dbos import DBOS, DBOSConfig
from pydantic_ai import Agent, Tool
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.usage import UsageLimits

from agentmill.agents.models import override_models
from agentmill.engine.engine import Engine
from agentmill.settings import Settings
from agentmill.spec.loader import load_project_text
from agentmill.spec.models import ProjectSpec
from agentmill.store.db import prepare_sqlite_file, sync_url
from benchmarks._common import PG_ADMIN_URL, median, postgres_settings, row, sqlite_settings

CALLS = int(os.environ.get("AGENTMILL_BENCH_CALLS", "200"))
ROUNDS = int(os.environ.get("AGENTMILL_BENCH_ROUNDS", "5"))
TARGET_MS = 1.0
Runner = Callable[[], Awaitable[object]]
LIMITS = UsageLimits(request_limit=None)
"""pydantic-ai stops a run at 50 model requests by default."""


def scripted_model(calls: int) -> FunctionModel:
    """Calls `ping(i)` for i = 0..calls-1, one call per turn, then answers `done`.

    The next call is read from the last tool result only, so a turn costs the same at call
    1 and call 200 (the history still grows, as in any agent loop).
    """

    async def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        last = messages[-1]
        done = -1
        if isinstance(last, ModelRequest):
            for part in last.parts:
                if isinstance(part, ToolReturnPart):
                    done = int(str(part.content))
        if done + 1 < calls:
            return ModelResponse(parts=[ToolCallPart("ping", {"i": done + 1})])
        return ModelResponse(parts=[TextPart("done")])

    return FunctionModel(respond, model_name="scripted")


def ping(i: int) -> int:
    """The trivial tool: echoes its argument."""
    return i


@DBOS.step(name="bench.ping")
async def ping_step(i: int) -> int:
    """The tool's body as a DBOS step: recorded, so a recovery never runs it again."""
    return i


async def ping_durable(i: int) -> int:
    """The tool whose body is a DBOS step."""
    return await ping_step(i)


def _dbos_agents(calls: int) -> dict[str, Any]:
    """The DBOS variants; built once, before DBOS is configured (they register workflows)."""
    from pydantic_ai.durable_exec.dbos import DBOSAgent, DBOSDurability  # pyright: ignore[reportDeprecated]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DBOSAgent is deprecated in favour of DBOSDurability
        model_steps = DBOSAgent(Agent(scripted_model(calls), name="bench_model", tools=[ping]))  # pyright: ignore[reportDeprecated]
        all_steps = DBOSAgent(  # pyright: ignore[reportDeprecated]
            Agent(scripted_model(calls), name="bench_all", tools=[Tool(ping_durable, name="ping")])
        )
    capability = Agent(
        scripted_model(calls),
        name="bench_capability",
        tools=[Tool(ping_durable, name="ping")],
        capabilities=[DBOSDurability()],
    )

    @DBOS.workflow(name="bench.capability_run")
    async def capability_run(prompt: str) -> str:
        return (await capability.run(prompt, usage_limits=LIMITS)).output

    return {"model": model_steps, "all": all_steps, "capability": capability_run}


@dataclass(frozen=True)
class Sample:
    """One run's time per tool call: wall clock, and CPU of the whole process (all threads)."""

    wall: float
    cpu: float


async def _timed(run: Runner, calls: int) -> Sample:
    wall, cpu = time.perf_counter(), time.process_time()
    await run()
    return Sample(
        wall=(time.perf_counter() - wall) * 1000 / calls,
        cpu=(time.process_time() - cpu) * 1000 / calls,
    )


async def _rounds(variants: dict[str, Runner], calls: int) -> dict[str, list[Sample]]:
    """ms per tool call of each variant, ROUNDS times, the variants taking turns.

    Taking turns (after one warm-up run each) spreads the machine's drift over all variants,
    so each round's difference to the bare run is a fair pair.
    """
    for run in variants.values():
        await run()
    times: dict[str, list[Sample]] = {name: [] for name in variants}
    for _ in range(ROUNDS):
        for name, run in variants.items():
            times[name].append(await _timed(run, calls))
    return times


def _launch(url: str) -> None:
    config: DBOSConfig = {
        "name": "agentmill-bench",
        "system_database_url": url,
        "executor_id": f"bench-{uuid.uuid4().hex[:8]}",
        "application_version": "bench",
        "max_executor_threads": 8,
        "log_level": "ERROR",
    }
    DBOS(config=config)
    DBOS.launch()


async def bench_dbos(url: str, agents: dict[str, Any], calls: int) -> dict[str, list[Sample]]:
    """ms per tool call of the bare run and each DBOS variant, on the system database at `url`."""
    bare = Agent(scripted_model(calls), tools=[ping])
    _launch(url)
    try:
        return await _rounds(
            {
                "bare": lambda: bare.run("go", usage_limits=LIMITS),
                "model": lambda: agents["model"].run("go", usage_limits=LIMITS),
                "all": lambda: agents["all"].run("go", usage_limits=LIMITS),
                "capability": lambda: agents["capability"]("go"),
            },
            calls,
        )
    finally:
        DBOS.destroy(destroy_registry=False)
        # DBOS made its thread pool the loop's default executor and has just shut it down.
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor())


TOOLS_MODULE = '''
def ping(i: int) -> int:
    """Echo i."""
    return i
'''

CONFIG = """
version: 1
agents:
  pinger:
    model: openai:gpt-4o
    max_turns: {turns}
    max_tool_calls: {calls}
    tools: [{{function: {module}:ping}}]
workflows:
  w:
    steps:
      - {{id: work, agent: pinger, prompt: go}}
"""


async def _engine_run(engine: Engine, project: ProjectSpec, config: Path) -> None:
    run = await engine.submit(project, "w", {}, config_path=str(config))
    finished = await engine.wait(run.id)
    assert finished.status == "succeeded", finished.error


async def bench_agentmill(settings: Settings, calls: int) -> tuple[list[Sample], list[Sample]]:
    """ms per tool call through the engine (a one-step workflow whose agent has the tool),
    and of the bare run, in paired rounds."""
    module = f"bench_tools_{uuid.uuid4().hex[:8]}"
    (settings.home / f"{module}.py").write_text(TOOLS_MODULE)
    config = settings.home / "agentmill.yaml"
    config.write_text(CONFIG.format(module=module, turns=calls + 1, calls=calls))
    project = load_project_text(config.read_text(), str(config)).spec
    bare = Agent(scripted_model(calls), tools=[ping])
    engine = Engine(settings)
    await engine.start()
    try:
        with override_models(lambda label: scripted_model(calls)):
            times = await _rounds(
                {
                    "bare": lambda: bare.run("go", usage_limits=LIMITS),
                    "agentmill": lambda: _engine_run(engine, project, config),
                },
                calls,
            )
    finally:
        await engine.stop()
    return times["agentmill"], times["bare"]


@contextmanager
def sqlite_url() -> Generator[str]:
    """A system database in a fresh temp file, switched to WAL as agentmill does."""
    home = Path(tempfile.mkdtemp(prefix="agentmill-bench-"))
    try:
        url = f"sqlite:///{home / 'dbos.db'}"
        prepare_sqlite_file(url)
        yield url
    finally:
        shutil.rmtree(home, ignore_errors=True)


@contextmanager
def postgres_url() -> Generator[str | None]:
    """A fresh PostgreSQL database, dropped afterwards; None when PostgreSQL is not there."""
    try:
        import psycopg
        from psycopg import sql

        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except Exception:
        yield None
        return
    name = f"agentmill_bench_{uuid.uuid4().hex[:8]}"
    admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield sync_url(f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}")
    finally:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        admin.close()


def _cells(name: str, times: list[Sample], bare: list[Sample]) -> str:
    """A row: median ms per call, and the median of the rounds' differences to the bare run."""
    wall = median([t.wall - b.wall for t, b in zip(times, bare, strict=True)])
    cpu = median([t.cpu - b.cpu for t, b in zip(times, bare, strict=True)])
    return row(
        name,
        f"{median([t.wall for t in times]):.2f} ms",
        f"{median([b.wall for b in bare]):.2f} ms",
        f"**{wall:.2f} ms**",
        f"{cpu:.2f} ms",
        f"≤ {TARGET_MS:.0f} ms {'✔' if wall <= TARGET_MS else '✘'}" if "SQLite" in name else "",
    )


async def _backend_rows(backend: str, settings: Settings, agents: dict[str, Any]) -> None:
    times = await bench_dbos(sync_url(settings.resolved_database_url), agents, CALLS)
    bare = times["bare"]
    print(_cells(f"DBOSAgent, model steps ({backend})", times["model"], bare), flush=True)
    print(_cells(f"DBOSAgent, model + tool steps ({backend})", times["all"], bare), flush=True)
    print(_cells(f"DBOSDurability, model + tool steps ({backend})", times["capability"], bare))
    print(_cells(f"agentmill ({backend})", *await bench_agentmill(settings, CALLS)), flush=True)


async def main() -> None:
    agents = _dbos_agents(CALLS)
    print(f"{CALLS} sequential tool calls, one per model turn; medians of {ROUNDS} rounds\n")
    print(
        row("variant", "per call", "bare per call", "overhead (wall)", "overhead (CPU)", "target")
    )
    print(row("---", "---", "---", "---", "---", "---"))
    with sqlite_settings() as settings:
        prepare_sqlite_file(settings.resolved_database_url)
        await _backend_rows("SQLite", settings, agents)
    with postgres_settings() as settings:
        if settings is None:
            print(row("PostgreSQL", "skipped: PostgreSQL not reachable", "", "", "", ""))
        else:
            await _backend_rows("PostgreSQL", settings, agents)


if __name__ == "__main__":
    asyncio.run(main())
