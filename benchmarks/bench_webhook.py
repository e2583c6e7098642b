"""GitHub webhook benchmarks against a real `agentmill serve` subprocess (fake 0 ms model).

Figures: the time to the 202 answer, and from sending the POST to the run starting
(`am_runs.started_at`, and the `run_started` event), which includes the shared queue's pickup.
Deliveries are sent one at a time, 50 ms apart (latency, not throughput); then a burst of
concurrent deliveries measures the answer time under load.

Run: python -m benchmarks.bench_webhook
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

import httpx

from agentmill.server.github import sign
from agentmill.settings import Settings
from agentmill.store import Store
from benchmarks._common import fake_model, free_port, postgres_settings, row, sqlite_settings

SECRET = "bench-webhook-secret"
TENANT = "bench"
ROOT = Path(__file__).resolve().parents[1]

CONFIG = """
version: 1
models: {default: openai:gpt-4o}
agents:
  reviewer: {instructions: be brief}
workflows:
  review:
    inputs: {repo: {type: string}, number: {type: integer}}
    steps:
      - {id: review, agent: reviewer, prompt: "review {{ inputs.repo }}#{{ inputs.number }}"}
triggers:
  - github:
      events: [pull_request.opened]
      workflow: review
      inputs:
        repo: "{{ payload.repository.full_name }}"
        number: "{{ payload.pull_request.number }}"
      concurrency: {mode: allow}
"""


@dataclass
class Sent:
    run_id: str
    sent_at: float
    """Epoch seconds just before the POST (same clock as the server's `started_at`)."""
    answered_in: float


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


@contextlib.contextmanager
def serving(settings: Settings, workdir: Path) -> Generator[str]:
    """`agentmill serve` (this module with `--serve`: every model is the fake one)."""
    config = workdir / "agentmill.yaml"
    config.write_text(CONFIG)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTMILL_")}
    env |= {
        "AGENTMILL_HOME": str(settings.home),
        "AGENTMILL_GITHUB_WEBHOOK_SECRET": SECRET,
        "AGENTMILL_GITHUB_WEBHOOK_TENANT": TENANT,
    }
    if settings.database_url:
        env["AGENTMILL_DATABASE_URL"] = settings.database_url
    command = [sys.executable, "-m", "benchmarks.bench_webhook", "--serve"]
    command += ["--config", str(config), "--port", str(port), "--workers", "4"]
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(process, url)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)


def _wait_ready(process: subprocess.Popen[bytes], url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"agentmill serve exited with {process.returncode}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        time.sleep(0.05)
    raise RuntimeError(f"agentmill serve was not ready within {timeout} s")


async def deliver(client: httpx.AsyncClient, number: int) -> Sent:
    payload = {
        "action": "opened",
        "repository": {"full_name": "octo/bench"},
        "pull_request": {"number": number},
    }
    body = json.dumps(payload).encode()
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": "pull_request",
        "X-GitHub-Delivery": uuid.uuid4().hex,
        "X-Hub-Signature-256": sign(SECRET, body),
    }
    sent_at, started = time.time(), time.perf_counter()
    response = await client.post("/v1/webhooks/github", content=body, headers=headers)
    answered_in = time.perf_counter() - started
    response.raise_for_status()
    [run_id] = response.json()["runs"]
    return Sent(run_id=run_id, sent_at=sent_at, answered_in=answered_in)


async def start_latencies(settings: Settings, sent: list[Sent]) -> tuple[list[float], list[float]]:
    """Seconds from sending to `started_at`, and to the `run_started` event, per run."""
    store = await Store.open(settings.resolved_database_url)
    try:
        to_started: list[float] = []
        to_event: list[float] = []
        for item in sent:
            run = await store.get_run(item.run_id, tenant=TENANT)
            while run.started_at is None or not run.status.finished:
                await asyncio.sleep(0.1)
                run = await store.get_run(item.run_id, tenant=TENANT)
            to_started.append(run.started_at - item.sent_at)
            events = await store.events(item.run_id)
            started = next(e for e in events if e.kind == "run_started")
            to_event.append(started.ts - item.sent_at)
        return to_started, to_event
    finally:
        await store.close()


def _ms(values: list[float]) -> tuple[str, str]:
    return f"{percentile(values, 0.5) * 1000:.1f} ms", f"{percentile(values, 0.99) * 1000:.1f} ms"


async def bench(settings: Settings, backend: str, count: int = 100, burst: int = 50) -> list[str]:
    with tempfile.TemporaryDirectory() as workdir, serving(settings, Path(workdir)) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            warm_up = [await deliver(client, number) for number in range(5)]
            await start_latencies(settings, warm_up)  # first runs pay for imports and pools
            sent: list[Sent] = []
            for number in range(count):
                sent.append(await deliver(client, number))
                await asyncio.sleep(0.05)
            burst_sent = await asyncio.gather(*(deliver(client, n) for n in range(burst)))
        to_started, to_event = await start_latencies(settings, sent)
        await start_latencies(settings, list(burst_sent))  # let the burst finish before stopping
    sequential = f"{count} deliveries, 50 ms apart"
    return [
        row(f"webhook 202 answer ({backend})", sequential, *_ms([s.answered_in for s in sent])),
        row(f"webhook → run started_at ({backend})", sequential, *_ms(to_started)),
        row(f"webhook → run_started event ({backend})", sequential, *_ms(to_event)),
        row(
            f"webhook 202 answer ({backend})",
            f"{burst} concurrent deliveries",
            *_ms([s.answered_in for s in burst_sent]),
        ),
    ]


async def main() -> None:
    print(row("benchmark", "workload", "p50", "p99"))
    print(row("---", "---", "---", "---"))
    with sqlite_settings() as settings:
        for line in await bench(settings, "SQLite"):
            print(line, flush=True)
    with postgres_settings() as pg:
        if pg is None:
            print(row("webhook (PostgreSQL)", "skipped: PostgreSQL not reachable", "", ""))
        else:
            for line in await bench(pg, "PostgreSQL"):
                print(line, flush=True)


def serve_with_fake_model(args: list[str]) -> None:
    """The server side: the real CLI's `serve`, every model replaced by a 0 ms fake."""
    from agentmill.agents.models import override_models
    from agentmill.cli.app import main as cli_main

    with override_models(lambda label: fake_model(0)):
        sys.argv = ["agentmill", "serve", *args]
        cli_main()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve_with_fake_model(sys.argv[2:])
    else:
        asyncio.run(main())
