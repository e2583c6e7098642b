"""API latency: `GET /v1/runs/{id}` on a real server, next to a bare FastAPI floor.

Both servers are uvicorn subprocesses on free ports, started by this script; the client
is one keep-alive httpx connection per server making sequential requests, alternating
between the two servers in blocks so both see the same machine load. The floor returns
the same JSON document as a constant, so the difference is what agentmill adds: key
check, rate limit, metrics, the database reads and the response model.

Run: python -m benchmarks.bench_api
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Generator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from agentmill.settings import Settings
from benchmarks._common import free_port, postgres_settings, row, sqlite_settings

HERE = Path(__file__).resolve().parent
PROJECT = """
version: 1
agents:
  writer: {model: openai:fake}
workflows:
  w:
    inputs: {topic: {type: string}}
    steps:
      - {id: draft, agent: writer, prompt: "draft {{ inputs.topic }}"}
      - {id: polish, agent: writer, needs: [draft], prompt: "polish {{ steps.draft.output }}"}
"""
UNTHROTTLED = {"rate_limit": 1e9, "rate_burst": 10**9}
WARM_UP = 200
REQUESTS = 2000
BLOCK = 250


# the servers (run in subprocesses: `python -m benchmarks.bench_api --serve KIND PORT`)


def _serve_agentmill(port: int) -> None:
    import uvicorn

    from agentmill.agents.models import override_models
    from agentmill.server.app import create_app
    from agentmill.spec.loader import load_project_text
    from benchmarks._common import fake_model

    app = create_app(Settings(), project=load_project_text(PROJECT, "bench.yaml"), workers=1)
    with override_models(lambda label: fake_model(0)):
        uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")


def _serve_floor(port: int, body_file: str) -> None:
    import uvicorn
    from fastapi import FastAPI

    body: dict[str, Any] = json.loads(Path(body_file).read_text())
    app = FastAPI()

    @app.get("/v1/runs/{run_id}")
    async def show(run_id: str) -> dict[str, Any]:  # pyright: ignore[reportUnusedFunction]
        return body

    @app.get("/readyz")
    async def ready() -> dict[str, str]:  # pyright: ignore[reportUnusedFunction]
        return {"status": "ready"}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


@contextmanager
def _server(settings: Settings, *args: str) -> Generator[str]:
    """A server subprocess on a free port, ready; yields its base URL."""
    port = free_port()
    env = {
        **os.environ,
        "AGENTMILL_HOME": str(settings.home),
        "AGENTMILL_RATE_LIMIT": str(settings.rate_limit),
        "AGENTMILL_RATE_BURST": str(settings.rate_burst),
    }
    if settings.database_url:
        env["AGENTMILL_DATABASE_URL"] = settings.database_url
    command = [sys.executable, "-m", "benchmarks.bench_api", "--serve", args[0], str(port)]
    process = subprocess.Popen([*command, *args[1:]], cwd=HERE.parent, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, process)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the server at {url} did not become ready")


# measuring


async def _operator_key(settings: Settings) -> str:
    from agentmill.store import Store
    from agentmill.store.keys import KeyStore, Role

    store = await Store.open(settings.resolved_database_url)
    try:
        _, secret = await KeyStore(store.engine).create(tenant="bench", role=Role.OPERATOR)
    finally:
        await store.close()
    return secret


def _finished_run(client: httpx.Client) -> str:
    response = client.post("/v1/runs", json={"workflow": "w", "inputs": {"topic": "bench"}})
    response.raise_for_status()
    run_id: str = response.json()["id"]
    deadline = time.monotonic() + 30
    while client.get(f"/v1/runs/{run_id}").json()["finished_at"] is None:
        if time.monotonic() > deadline:
            raise RuntimeError("the run did not finish")
        time.sleep(0.05)
    return run_id


def _timed(client: httpx.Client, path: str, count: int) -> list[float]:
    seconds: list[float] = []
    for _ in range(count):
        started = time.perf_counter()
        response = client.get(path)
        seconds.append(time.perf_counter() - started)
        if response.status_code != 200:
            raise RuntimeError(f"GET {path}: {response.status_code} {response.text[:200]}")
    return seconds


def _percentiles(seconds: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(seconds, n=100, method="inclusive")
    return cuts[49] * 1000, cuts[98] * 1000


def bench_show_run(settings: Settings, backend: str) -> list[str]:
    headers = {"Authorization": f"Bearer {asyncio.run(_operator_key(settings))}"}
    with (
        _server(settings, "agentmill") as url,
        httpx.Client(base_url=url, headers=headers, timeout=30) as ours,
    ):
        run_id = _finished_run(ours)
        path = f"/v1/runs/{run_id}"
        body = ours.get(path).content
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as file:
            file.write(body)
        try:
            with (
                _server(settings, "floor", file.name) as floor_url,
                httpx.Client(base_url=floor_url, timeout=30) as floor,
            ):
                agentmill_s, floor_s = _alternating(ours, floor, path)
        finally:
            os.unlink(file.name)
    return _rows(backend, len(body), agentmill_s, floor_s)


def _alternating(
    ours: httpx.Client, floor: httpx.Client, path: str
) -> tuple[list[float], list[float]]:
    _timed(ours, path, WARM_UP)
    _timed(floor, path, WARM_UP)
    agentmill_s: list[float] = []
    floor_s: list[float] = []
    for _ in range(REQUESTS // BLOCK):
        agentmill_s += _timed(ours, path, BLOCK)
        floor_s += _timed(floor, path, BLOCK)
    return agentmill_s, floor_s


def _rows(backend: str, size: int, agentmill_s: list[float], floor_s: list[float]) -> list[str]:
    ours50, ours99 = _percentiles(agentmill_s)
    floor50, floor99 = _percentiles(floor_s)
    workload = f"{REQUESTS} sequential requests, keep-alive, {size} B body"
    return [
        row(
            f"GET /v1/runs/{{id}} ({backend})",
            workload,
            f"p50 {ours50:.2f} ms, p99 {ours99:.2f} ms",
            f"p50 {floor50:.2f} ms, p99 {floor99:.2f} ms",
            f"**added p50 {ours50 - floor50:.2f} ms, p99 {ours99 - floor99:.2f} ms**",
        )
    ]


def main() -> None:
    print(row("benchmark", "workload", "agentmill", "bare FastAPI floor", "result"))
    print(row("---", "---", "---", "---", "---"))
    with sqlite_settings(**UNTHROTTLED) as settings:
        print("\n".join(bench_show_run(settings, "SQLite")), flush=True)
    with postgres_settings(**UNTHROTTLED) as pg:
        if pg is None:
            print(row("GET /v1/runs/{id} (PostgreSQL)", "skipped: not reachable", "", "", ""))
        else:
            print("\n".join(bench_show_run(pg, "PostgreSQL")), flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        kind, port = sys.argv[2], int(sys.argv[3])
        if kind == "agentmill":
            _serve_agentmill(port)
        else:
            _serve_floor(port, sys.argv[4])
    else:
        main()
