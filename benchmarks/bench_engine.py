"""Engine benchmarks: durable overhead per step, fan-out, memory per in-flight run.

Each figure is printed next to a plain-asyncio floor doing the same model calls in the
same process, so the difference is what durability costs. Run: python benchmarks/bench_engine.py
"""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc
from collections.abc import AsyncIterator

from pydantic_ai.messages import ModelMessage
from pydantic_ai.models.function import AgentInfo, FunctionModel

from agentmill.agents.base import StepRequest
from agentmill.agents.llm import LLMAgent
from agentmill.agents.models import override_models
from agentmill.engine.engine import Engine
from agentmill.settings import Settings
from agentmill.spec.models import AgentSpec, ProjectSpec, StepSpec, WorkflowSpec
from benchmarks._common import execution_time, fake_model, postgres_settings, row, sqlite_settings


class _NoContext:
    async def emit_text(self, text: str) -> None:
        return None


def _chain(steps: int) -> ProjectSpec:
    chain = [StepSpec(id="s0", agent="a", prompt="go")]
    chain += [
        StepSpec(id=f"s{i}", agent="a", prompt="go", needs=[f"s{i - 1}"]) for i in range(1, steps)
    ]
    return ProjectSpec(
        agents={"a": AgentSpec(model="openai:fake")},
        workflows={"w": WorkflowSpec(steps=chain)},
    )


def _fan_out(cap: int) -> ProjectSpec:
    step = StepSpec(
        id="each", agent="a", prompt="{{ item }}", foreach="{{ inputs.items }}", concurrency=cap
    )
    return ProjectSpec(
        agents={"a": AgentSpec(model="openai:fake")},
        workflows={"w": WorkflowSpec(steps=[step], inputs={"items": {"type": "list"}})},  # type: ignore[dict-item]
    )


async def _floor_sequential(steps: int, latency: float) -> float:
    agent = LLMAgent(model=fake_model(latency), label="fake")
    start = time.perf_counter()
    for i in range(steps):
        await agent.run(StepRequest(run_id="r", step_id=f"s{i}", prompt="go"), _NoContext())
    return time.perf_counter() - start


async def _floor_fan_out(calls: int, latency: float, cap: int) -> float:
    agent = LLMAgent(model=fake_model(latency), label="fake")
    slots = asyncio.Semaphore(cap)

    async def one(i: int) -> None:
        async with slots:
            await agent.run(
                StepRequest(run_id="r", step_id="e", prompt=str(i), index=i), _NoContext()
            )

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(calls)))
    return time.perf_counter() - start


async def bench_sequential(settings: Settings, backend: str, steps: int = 200) -> str:
    engine = Engine(settings)
    await engine.start()
    try:
        with override_models(lambda label: fake_model(0)):
            await execution_time(engine, _chain(5), {})  # warm-up
            durable = min([await execution_time(engine, _chain(steps), {}) for _ in range(3)])
        floor = min([await _floor_sequential(steps, 0) for _ in range(3)])
    finally:
        await engine.stop()
    per_step = (durable - floor) / steps * 1000
    return row(
        f"sequential steps ({backend})",
        f"{steps} steps, 0 ms model",
        f"{durable * 1000 / steps:.2f} ms/step",
        f"{floor * 1000 / steps:.3f} ms/step",
        f"**{per_step:.2f} ms/step overhead** (target ≤ 2)",
    )


async def bench_fan_out(
    settings: Settings, calls: int = 1000, latency: float = 0.05, cap: int = 100
) -> str:
    engine = Engine(settings)
    await engine.start()
    items = list(range(calls))
    try:
        with override_models(lambda label: fake_model(latency)):
            await execution_time(engine, _fan_out(cap), {"items": items[:10]})
            durable = min(
                [await execution_time(engine, _fan_out(cap), {"items": items}) for _ in range(2)]
            )
        floor = await _floor_fan_out(calls, latency, cap)
    finally:
        await engine.stop()
    ideal = calls / cap * latency
    return row(
        "fan-out (SQLite)",
        f"{calls} calls, {latency * 1000:.0f} ms model, cap {cap}",
        f"{durable:.3f} s",
        f"{floor:.3f} s",
        f"**{durable / ideal:.2f}x ideal {ideal:.1f} s** (target ≤ 1.3x)",
    )


async def bench_memory(settings: Settings, runs: int = 1000) -> str:
    release = asyncio.Event()
    started = 0

    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
        nonlocal started
        started += 1
        await release.wait()
        yield "ok"

    engine = Engine(settings)
    await engine.start()
    project = _chain(1)
    try:
        with override_models(
            lambda label: FunctionModel(stream_function=stream, model_name="slow")
        ):
            await _warm(engine, project, release)
            release.clear()
            started = 0
            gc.collect()
            tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
            ids = [(await engine.submit(project, "w", {})).id for _ in range(runs)]
            while started < runs:
                await asyncio.sleep(0.05)
            gc.collect()
            during = tracemalloc.get_traced_memory()[0]
            tracemalloc.stop()
            release.set()
            for run_id in ids:
                await engine.wait(run_id)
    finally:
        await engine.stop()
    per_run = (during - before) / runs / 1024
    return row(
        "memory per in-flight run (SQLite)",
        f"{runs} runs waiting on a model",
        f"{per_run:.1f} KiB/run",
        "n/a",
        f"**{per_run:.1f} KiB** (target ≤ 100)",
    )


async def _warm(engine: Engine, project: ProjectSpec, release: asyncio.Event) -> None:
    release.set()
    run = await engine.submit(project, "w", {})
    await engine.wait(run.id)


async def main() -> None:
    print(row("benchmark", "workload", "agentmill", "plain asyncio floor", "result"))
    print(row("---", "---", "---", "---", "---"))
    with sqlite_settings() as settings:
        print(await bench_sequential(settings, "SQLite"), flush=True)
    with postgres_settings() as pg:
        if pg is None:
            print(
                row(
                    "sequential steps (PostgreSQL)", "skipped: PostgreSQL not reachable", "", "", ""
                )
            )
        else:
            print(await bench_sequential(pg, "PostgreSQL"), flush=True)
    with sqlite_settings() as settings:
        print(await bench_fan_out(settings), flush=True)
    with sqlite_settings() as settings:
        print(await bench_memory(settings), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
