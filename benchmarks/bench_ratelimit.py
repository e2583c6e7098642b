"""Shared rate limits: throughput of N worker processes against a limit of R requests per
minute (achieved vs R), and what the limiter adds to a call that does not wait.

Throughput: N worker processes (this script with `--worker`), each with 32 calls in
flight through `rate_limited` on one PostgreSQL database, a FunctionModel answering after
50 ms. The rate is counted between the moment the last worker made its first call and
the moment the first worker stopped, so process start-up does not count.

Overhead: sequential calls of a 0 ms FunctionModel through an LLMAgent, bare and behind
limits that never make it wait (rpm 10,000,000; plus a concurrency cap of 1,000).

Run: python -m benchmarks.bench_ratelimit
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from pydantic_ai.messages import ModelMessage
from pydantic_ai.models.function import AgentInfo, FunctionModel

from agentmill.agents.base import Agent, StepRequest
from agentmill.agents.llm import LLMAgent
from agentmill.policy.ratelimit import rate_limited
from agentmill.settings import Settings
from agentmill.spec.models import RateLimitSpec
from agentmill.store import Store
from benchmarks._common import fake_model, median, postgres_settings, row, sqlite_settings

HERE = Path(__file__).resolve().parent
LABEL = "openai:gpt-4o"
RPM = 1200
WORKERS = 4
SECONDS = 15.0
IN_FLIGHT = 32
OVERHEAD_CALLS = 300


class _NoContext:
    async def emit_text(self, text: str) -> None:
        return None


def _agent(
    store: Store, limits: dict[str, Any], latency: float, starts: list[float] | None = None
) -> Agent:
    model = fake_model(latency) if starts is None else _recording_model(latency, starts)
    llm = LLMAgent(model=model, label=LABEL)
    specs = {key: RateLimitSpec.model_validate(value) for key, value in limits.items()}
    return rate_limited(llm, llm=llm, limits=specs, store=store, shared={})


# throughput: the worker processes


def _recording_model(latency: float, starts: list[float]) -> FunctionModel:
    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
        starts.append(time.time())
        await asyncio.sleep(latency)
        yield "ok"

    return FunctionModel(stream_function=stream, model_name="gpt-4o")


async def _worker(url: str, rpm: int, seconds: float) -> list[float]:
    store = await Store.open(url)
    starts: list[float] = []
    try:
        agent = _agent(store, {"openai": {"rpm": rpm}}, 0.05, starts)

        async def calls(lane: int) -> None:
            for n in range(1_000_000):
                request = StepRequest(run_id="b", step_id=str(lane), prompt="hi", index=n)
                await agent.run(request, _NoContext())

        lanes = [asyncio.create_task(calls(lane)) for lane in range(IN_FLIGHT)]
        await asyncio.sleep(seconds)
        for lane in lanes:
            lane.cancel()  # calls still waiting for a slot stop at once
        await asyncio.gather(*lanes, return_exceptions=True)
    finally:
        await store.close()
    return starts


def _run_workers(url: str, workers: int, rpm: int, seconds: float) -> list[list[float]]:
    with tempfile.TemporaryDirectory() as tmp:
        outs = [str(Path(tmp) / f"w{n}.json") for n in range(workers)]
        command = [sys.executable, "-m", "benchmarks.bench_ratelimit", "--worker", url]
        procs = [
            subprocess.Popen([*command, str(rpm), str(seconds), out], cwd=HERE.parent)
            for out in outs
        ]
        for proc in procs:
            if proc.wait(timeout=seconds + 120) != 0:
                raise RuntimeError("a worker failed")
        return [sorted(json.loads(Path(out).read_text())) for out in outs]


def bench_throughput(settings: Settings | None) -> str:
    workload = f"{WORKERS} processes x {IN_FLIGHT} in flight, R = {RPM} rpm"
    if settings is None:
        return row("rate limit throughput (PostgreSQL)", workload, "skipped: no PostgreSQL", "")
    url = settings.resolved_database_url
    asyncio.run(_migrate(url))
    per_worker = _run_workers(url, WORKERS, RPM, SECONDS + 5)
    begin = max(starts[0] for starts in per_worker)
    end = min(starts[-1] for starts in per_worker)
    window = [t for starts in per_worker for t in starts if begin <= t <= end]
    achieved = (len(window) - 1) / (end - begin) * 60
    busiest = _max_in_window(sorted(window), 1.0)
    shares = [sum(1 for t in starts if begin <= t <= end) for starts in per_worker]
    return row(
        "rate limit throughput (PostgreSQL)",
        f"{workload}, {end - begin:.1f} s measured",
        f"{achieved:.0f} rpm; busiest second {busiest} (R/60 = {RPM / 60:.0f}); "
        f"per worker {shares}",
        f"**{achieved / RPM:.1%} of R** (target >= 90%; slots never above R, starts "
        "may lag them by a few ms)",
    )


def _max_in_window(ordered: list[float], width: float) -> int:
    best, j = 0, 0
    for i, start in enumerate(ordered):
        while j < len(ordered) and ordered[j] < start + width:
            j += 1
        best = max(best, j - i)
    return best


async def _migrate(url: str) -> None:
    store = await Store.open(url)
    await store.close()


# overhead per call that does not wait


async def bench_overhead(settings: Settings, backend: str) -> str:
    store = await Store.open(settings.resolved_database_url)
    try:
        variants = {
            "bare": _agent(store, {}, 0),
            "rpm": _agent(store, {"openai": {"rpm": 10_000_000}}, 0),
            "rpm+cap": _agent(store, {"openai": {"rpm": 10_000_000, "concurrency": 1000}}, 0),
        }
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(3):  # interleaved rounds: every variant sees the same machine load
            for name, agent in variants.items():
                times[name].append(await _per_call(agent))
    finally:
        await store.close()
    bare, rpm, cap = (min(times[name]) * 1e3 for name in ("bare", "rpm", "rpm+cap"))
    return row(
        f"rate limiter overhead ({backend})",
        f"{OVERHEAD_CALLS} sequential calls, 0 ms model, never waiting",
        f"bare {bare:.2f} ms; rpm {rpm:.2f} ms; rpm+concurrency {cap:.2f} ms per call",
        f"**+{rpm - bare:.2f} ms (rpm)** (target ≤ 2), +{cap - bare:.2f} ms (rpm+cap)",
    )


async def _per_call(agent: Agent) -> float:
    durations: list[float] = []
    for n in range(OVERHEAD_CALLS):
        request = StepRequest(run_id="o", step_id="s", prompt="hi", index=n)
        began = time.perf_counter()
        await agent.run(request, _NoContext())
        durations.append(time.perf_counter() - began)
    return median(durations)


def main() -> None:
    print(row("benchmark", "workload", "measured", "result"))
    print(row("---", "---", "---", "---"))
    with postgres_settings() as pg:
        print(bench_throughput(pg), flush=True)
        if pg is not None:
            print(asyncio.run(bench_overhead(pg, "PostgreSQL")), flush=True)
    with sqlite_settings() as settings:
        print(asyncio.run(bench_overhead(settings, "SQLite")), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", nargs=4, metavar=("URL", "RPM", "SECONDS", "OUT"))
    args = parser.parse_args()
    if args.worker:
        url, rpm, seconds, out = args.worker
        Path(out).write_text(json.dumps(asyncio.run(_worker(url, int(rpm), float(seconds)))))
    else:
        main()
