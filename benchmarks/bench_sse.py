"""SSE streaming latency: a token yielded by a step's model -> the event received by a client.

One real `agentmill serve` subprocess (SQLite) whose model streams tokens on a fixed
schedule, each token carrying the `time.time()` of its yield; `--streams` SSE clients
(httpx, one event loop, this process) subscribed to `--runs` runs. Every `step_output`
a client receives gives one latency sample. Target: p99 under 150 ms at 200 streams.

Run: python -m benchmarks.bench_sse [--streams 200] [--runs 20] [--tokens 100]
     [--interval 0.02]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from pydantic_ai.messages import ModelMessage
from pydantic_ai.models.function import AgentInfo, FunctionModel

from benchmarks._common import free_port, row

ROOT = Path(__file__).resolve().parents[1]
CONFIG = """
version: 1
models: {default: openai:bench}
agents:
  writer: {instructions: stream}
workflows:
  stream:
    inputs: {n: {type: string}}
    steps:
      - {id: write, agent: writer, prompt: "write {{ inputs.n }}"}
"""
SSE = {"Accept": "text/event-stream"}
_SEPARATOR = ";"


# the server process


def _timestamp_model(label: str) -> FunctionModel:
    """Waits for the clients to connect, then yields `tokens` tokens `interval` apart,
    each the time of its own yield."""
    tokens = int(os.environ["BENCH_TOKENS"])
    interval = float(os.environ["BENCH_INTERVAL"])
    warmup = float(os.environ["BENCH_WARMUP"])

    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
        await asyncio.sleep(warmup)
        for _ in range(tokens):
            yield f"{time.time():.6f}{_SEPARATOR}"
            await asyncio.sleep(interval)

    return FunctionModel(stream_function=stream, model_name=label)


def _serve(argv: list[str]) -> None:
    from agentmill.agents.models import override_models
    from agentmill.cli.app import main

    with override_models(_timestamp_model):
        sys.argv = ["agentmill", *argv]
        main()


# the clients


@dataclass
class Samples:
    start_at: float
    """When the model starts yielding tokens."""
    latencies: list[float] = field(default_factory=list)
    first_token: float = float("inf")
    last_token: float = 0.0
    connected: int = 0
    unfinished: list[str] = field(default_factory=list)
    """Streams that ended without `run_finished`, with the last event kind they saw."""
    late_connections: int = 0
    """Streams whose first event came after the first token (their early samples are history)."""
    client_cpu: float = 0.0
    """CPU seconds of the clients' process while tokens flow (a saturated client inflates
    the latencies), and of the server's."""
    server_cpu: float | None = None
    window: float = 1.0
    """Seconds from the first token on."""


async def _subscribe(client: httpx.AsyncClient, url: str, samples: Samples) -> None:
    async with client.stream("GET", url, headers=SSE) as response:
        response.raise_for_status()
        kind = ""
        first = True
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                received = time.time()
                if first:
                    first = False
                    samples.connected += 1
                    samples.late_connections += received > samples.start_at
                if kind == "step_output":
                    _record(json.loads(line[6:])["data"]["text"], received, samples)
        if kind != "run_finished":
            samples.unfinished.append(f"{url}: ended after {kind or 'nothing'}")


def _record(text: str, received: float, samples: Samples) -> None:
    for stamp in text.split(_SEPARATOR):
        if stamp:
            produced = float(stamp)
            samples.latencies.append(received - produced)
            samples.first_token = min(samples.first_token, produced)
            samples.last_token = max(samples.last_token, produced)


# orchestration


async def _create_key(home: Path) -> str:
    from agentmill.settings import Settings
    from agentmill.store import Store
    from agentmill.store.keys import KeyStore, Role

    store = await Store.open(Settings(home=home).resolved_database_url)
    try:
        _, secret = await KeyStore(store.engine).create(tenant="bench", role=Role.OPERATOR)
    finally:
        await store.close()
    return secret


def _start_server(home: Path, port: int, runs: int, env: dict[str, str]) -> subprocess.Popen[str]:
    config = home / "agentmill.yaml"
    config.write_text(CONFIG)
    command = [sys.executable, "-m", "benchmarks.bench_sse", "--serve", "--"]
    serve = ["serve", "--config", str(config), "--port", str(port), "--workers", str(runs)]
    return subprocess.Popen(
        [*command, *serve], cwd=ROOT, env=env, text=True, start_new_session=True
    )


async def _wait_ready(url: str, process: subprocess.Popen[str]) -> None:
    async with httpx.AsyncClient() as client:
        for _ in range(1200):
            if process.poll() is not None:
                raise SystemExit(f"the server exited with {process.returncode}")
            with contextlib.suppress(httpx.TransportError):
                if (await client.get(f"{url}/readyz")).status_code == 200:
                    return
            await asyncio.sleep(0.05)
    raise SystemExit("the server did not get ready in 60 s")


def _server_env(home: Path, args: argparse.Namespace) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTMILL_")}
    return env | {
        "AGENTMILL_HOME": str(home),
        "AGENTMILL_MAX_STREAMS_PER_KEY": str(args.streams + 10),
        "AGENTMILL_RATE_LIMIT": "100000",
        "AGENTMILL_RATE_BURST": "100000",
        "AGENTMILL_SHUTDOWN_GRACE": "1",
        "BENCH_TOKENS": str(args.tokens),
        "BENCH_INTERVAL": str(args.interval),
        "BENCH_WARMUP": str(args.warmup),
        "PYTHONPATH": str(ROOT),
    }


async def _drive(url: str, key: str, args: argparse.Namespace, server_pid: int) -> Samples:
    samples = Samples(start_at=time.time() + args.warmup)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=120) as c:
        run_ids: list[str] = []
        for n in range(args.runs):
            body = {"workflow": "stream", "inputs": {"n": str(n)}}
            started = await c.post("/v1/runs", json=body)
            started.raise_for_status()
            run_ids.append(started.json()["id"])
        async with asyncio.TaskGroup() as group:
            window = group.create_task(_cpu_from(samples.start_at, server_pid))
            for i in range(args.streams):
                events = f"/v1/runs/{run_ids[i % args.runs]}/events"
                group.create_task(_subscribe(c, events, samples))
    wall, client, server = window.result()
    samples.window = time.perf_counter() - wall
    samples.client_cpu = time.process_time() - client
    if server is not None and (now := _cpu_seconds(server_pid)) is not None:
        samples.server_cpu = now - server
    return samples


async def _cpu_from(start_at: float, pid: int) -> tuple[float, float, float | None]:
    """Wall clock, this process's CPU time and the server's, once tokens start to flow."""
    await asyncio.sleep(max(0.0, start_at - time.time()))
    return time.perf_counter(), time.process_time(), _cpu_seconds(pid)


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process (Linux), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def bench(args: argparse.Namespace) -> Samples:
    with tempfile.TemporaryDirectory(prefix="agentmill-bench-sse-") as tmp:
        home = Path(tmp)
        key = await _create_key(home)
        port = free_port()
        server = _start_server(home, port, args.runs, _server_env(home, args))
        try:
            url = f"http://127.0.0.1:{port}"
            await _wait_ready(url, server)
            return await _drive(url, key, args, server.pid)
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _report(args: argparse.Namespace, samples: Samples) -> None:
    lat = samples.latencies
    span = max(samples.last_token - samples.first_token, 1e-9)
    print(row("streams", "runs", "tokens/s per run", "events", "p50 ms", "p99 ms", "max ms",
              "events/s delivered", "client CPU", "server CPU", "server CPU µs/event"))  # fmt: skip
    print(row(*["---"] * 11))
    print(
        row(
            args.streams,
            args.runs,
            round(1 / args.interval),
            len(lat),
            f"{_percentile(lat, 0.50) * 1000:.1f}",
            f"{_percentile(lat, 0.99) * 1000:.1f}",
            f"{max(lat) * 1000:.1f}",
            f"{len(lat) / span:.0f}",
            f"{samples.client_cpu / samples.window:.0%}",
            "?" if samples.server_cpu is None else f"{samples.server_cpu / samples.window:.0%}",
            "?" if samples.server_cpu is None else f"{samples.server_cpu / len(lat) * 1e6:.0f}",
        )
    )
    for problem in samples.unfinished:
        print(f"warning: stream {problem}")
    expected = args.streams * args.tokens
    if len(lat) != expected or samples.late_connections:
        print(f"\nwarning: {len(lat)} samples of {expected} expected; "
              f"{samples.late_connections} streams connected after the first token")  # fmt: skip


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=100, help="tokens per run")
    parser.add_argument("--interval", type=float, default=0.02, help="seconds between tokens")
    parser.add_argument(
        "--warmup", type=float, default=3.0, help="seconds a step waits before its first token"
    )
    return parser.parse_args()


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--serve":
        _serve(sys.argv[3:])
    else:
        arguments = _arguments()
        _report(arguments, asyncio.run(bench(arguments)))
