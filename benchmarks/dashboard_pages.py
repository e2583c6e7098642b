"""Dashboard server time at 10,000 runs: the Runs page (each filter, a deep page) and a
Run page, next to the REST `GET /v1/runs` measured in the same run.

In-process: httpx over `ASGITransport` against `create_app(...)` with a signed-in session
cookie, so the figures are the server's time (routing, session check, queries, template)
plus httpx's own ~0.2 ms, without sockets. The history is one real run executed by the
engine (10 steps, each a tool call then 40 streamed tokens) copied 10,000 times with bulk
inserts, spread over 30 days, plus 1,000 runs of another tenant. Target: p99 under 50 ms.

Run: python -m benchmarks.dashboard_pages [--requests 200] [--store sqlite|postgresql|both]
     [--profile PATH]   (then pyinstrument over the requests of one URL, e.g. / or /runs/{id})
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import re
import statistics
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from fastapi import FastAPI
from pydantic_ai.messages import ModelMessage, ModelRequest, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, DeltaToolCalls, FunctionModel

from agentmill.agents.models import override_models
from agentmill.server.app import create_app
from agentmill.server.routes.runs import encode_cursor
from agentmill.server.services import Services
from agentmill.settings import Settings
from agentmill.spec.loader import load_project_text
from agentmill.store.keys import KeyStore, Role
from agentmill.store.tables import calls, events, runs, steps
from benchmarks._common import postgres_settings, row, sqlite_settings

TENANT = "bench"
RUNNING_ID = "running-detail"
HISTORY = 10_000
OTHER_TENANT_RUNS = 1_000
DAYS = 30
STEPS = 10
TOKENS = 40
WORKFLOWS = [f"wf{i}" for i in range(7)]
STATUSES = ["succeeded"] * 14 + ["failed", "failed", "cancelled", "interrupted", "running"]
TRIGGERS: list[dict[str, Any] | None] = [
    None,
    {"source": "api", "key": "k"},
    {"source": "api", "key": "k"},
    {"source": "github", "delivery": "d"},
    {"source": "schedule"},
]
TARGET_MS = 50.0
WARM_UP = 20
UNTHROTTLED = {"rate_limit": 1e9, "rate_burst": 10**9}


def _project_text() -> str:
    chain = ['      - {id: s1, agent: worker, prompt: "step 1"}']
    chain += [
        f'      - {{id: s{i}, agent: worker, needs: [s{i - 1}], prompt: "step {i}"}}'
        for i in range(2, STEPS + 1)
    ]
    others = [f'  {name}:\n    steps:\n      - {{id: s1, agent: worker, prompt: "go"}}'
              for name in WORKFLOWS]  # fmt: skip
    return "\n".join(
        [
            "version: 1",
            "agents:",
            "  worker:",
            "    model: openai:bench",
            "    tools:",
            "      - function: benchmarks.dashboard_pages:lookup",
            "workflows:",
            "  detail:",
            "    steps:",
            *chain,
            *others,
        ]
    )


def lookup(query: str) -> str:
    """Look a topic up (the tool of the benchmark's agent)."""
    return f"found: {query}"


# the recorded run: a tool call, then streamed text, in every step


def _model(label: str) -> FunctionModel:
    async def stream(
        messages: list[ModelMessage], info: AgentInfo
    ) -> AsyncIterator[str | DeltaToolCalls]:
        if not _tool_returned(messages):
            call = DeltaToolCall(name="lookup", json_args='{"query": "x"}', tool_call_id="c1")
            yield {0: call}
            return
        for i in range(TOKENS):
            yield f"word{i} "

    return FunctionModel(stream_function=stream, model_name=label)


def _tool_returned(messages: list[ModelMessage]) -> bool:
    return any(
        isinstance(part, ToolReturnPart)
        for message in messages
        if isinstance(message, ModelRequest)
        for part in message.parts
    )


async def _detail_run(services: Services) -> str:
    project = services.require_project()
    run = await services.engine.submit(
        project.spec, "detail", {}, config_path=str(services.config_path), tenant=TENANT
    )
    async for _ in services.engine.follow(run.id):
        pass
    finished = await services.engine.store.get_run(run.id, tenant=TENANT)
    if str(finished.status) != "succeeded":
        raise RuntimeError(f"the recorded run {finished.status}: {finished.error}")
    return run.id


# the history: the recorded run's rows copied with bulk inserts


async def _rows_of(
    engine: Any, table: sa.Table, column: sa.Column[Any], run_id: str
) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        result = await conn.execute(sa.select(table).where(column == run_id))
        return [dict(found._mapping) for found in result]  # pyright: ignore[reportPrivateUsage]


async def _seed(services: Services, detail: str) -> dict[str, int]:
    """HISTORY - 2 copies of `detail` with its first two steps, their tool calls and
    events; one whole copy whose last step is still running (RUNNING_ID: its page shows
    the text streamed so far, read from its events); OTHER_TENANT_RUNS of another tenant."""
    engine = services.engine.store.engine
    run = (await _rows_of(engine, runs, runs.c.id, detail))[0]
    whole = [
        (table, await _rows_of(engine, table, table.c.run_id, detail))
        for table in (steps, calls, events)
    ]
    history = [_history_run(run, i) for i in range(HISTORY - 2)]
    ids = [h["id"] for h in history]
    history += [_other_tenant_run(run, i) for i in range(OTHER_TENANT_RUNS)]
    history.append({**run, "id": RUNNING_ID, "status": "running", "finished_at": None})
    counts = {"runs": len(history) + 1}
    for table, rows in whole:
        column = "key" if table is steps else "step"
        kept = [r for r in rows if r.get(column) in (None, "s1", "s2")]
        copies = [{**r, "run_id": run_id} for run_id in ids for r in kept]
        copies += [_still_running({**r, "run_id": RUNNING_ID}) for r in rows]
        counts[table.name] = len(copies)
        await _insert(engine, table, copies)
    await _insert(engine, runs, history)
    return counts


def _still_running(record: dict[str, Any]) -> dict[str, Any]:
    """The last step's record as while it runs (events are kept as they are)."""
    if record.get("key") == f"s{STEPS}" and "step_id" in record:
        return {**record, "status": "running", "finished_at": None, "output": None}
    return record


def _history_run(model: dict[str, Any], i: int) -> dict[str, Any]:
    span = DAYS * 86400
    created = time.time() - span + i * span / HISTORY
    status = STATUSES[i % len(STATUSES)]
    trigger = TRIGGERS[i % len(TRIGGERS)]
    finished = status not in ("running", "interrupted")
    return {
        **model,
        "id": f"hist{i:06d}",
        "workflow": WORKFLOWS[i % len(WORKFLOWS)],
        "status": status,
        "trigger": trigger,
        "trigger_source": trigger["source"] if trigger else "cli",
        "error": "the model failed: boom" if status == "failed" else None,
        "created_at": created,
        "started_at": created + 0.05,
        "finished_at": created + 20 if finished else None,
    }


def _other_tenant_run(model: dict[str, Any], i: int) -> dict[str, Any]:
    return {**_history_run(model, i), "id": f"other{i:06d}", "tenant": "other"}


async def _insert(engine: Any, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    async with engine.begin() as conn:
        for start in range(0, len(rows), 2000):
            await conn.execute(table.insert(), rows[start : start + 2000])


# signing in and measuring


async def _signed_in(client: httpx.AsyncClient, secret: str) -> None:
    """Through the form, as a browser does: the session cookie stays in `client`."""
    form = await client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    if token is None:
        raise RuntimeError("no CSRF token in the sign-in form")
    data = {"key": secret, "csrf_token": token.group(1), "next": "/"}
    answer = await client.post("/login", data=data)
    if answer.status_code != 303 or "am_session" not in client.cookies:
        raise RuntimeError(f"sign-in failed: {answer.status_code} {answer.text[:200]}")


def _paths(detail: str, deep: str) -> list[tuple[str, str]]:
    day = (dt.datetime.now(dt.UTC) - dt.timedelta(days=10)).date().isoformat()
    return [
        ("Runs page, first page", "/"),
        ("Runs page, workflow filter", "/?workflow=wf3"),
        ("Runs page, status filter", "/?status=failed"),
        ("Runs page, trigger filter", "/?trigger=github"),
        ("Runs page, one day", f"/?since={day}&until={day}"),
        ("Runs page, page 100 (cursor)", f"/?cursor={deep}"),
        ("Runs page, live rows (2 s poll)", "/?fragment=rows"),
        ("Run page (10 steps, finished)", f"/runs/{detail}"),
        ("Run page (10 steps, last running)", f"/runs/{RUNNING_ID}"),
        ("REST peer: GET /v1/runs", "/v1/runs"),
        ("REST peer: GET /v1/runs?status=failed", "/v1/runs?status=failed"),
        ("REST peer: GET /v1/runs, page 100", f"/v1/runs?cursor={deep}"),
        ("REST peer: GET /v1/runs/{id}", f"/v1/runs/{detail}"),
    ]


@dataclass
class Samples:
    wall: list[float] = field(default_factory=list[float])
    cpu: list[float] = field(default_factory=list[float])
    """CPU seconds of this process (every thread) during each request."""
    failure: str | None = None


async def _measure(
    client: httpx.AsyncClient, paths: list[tuple[str, str]], requests: int
) -> dict[str, Samples]:
    """Round-robin over `paths` (so machine noise is shared): wall and CPU time per request."""
    samples = {label: Samples() for label, _ in paths}
    for _ in range(WARM_UP):
        for _, path in paths:
            await client.get(path)
    for _ in range(requests):
        for label, path in paths:
            found = samples[label]
            if found.failure is not None:
                continue
            cpu, started = time.process_time(), time.perf_counter()
            response = await client.get(path)
            found.wall.append(time.perf_counter() - started)
            found.cpu.append(time.process_time() - cpu)
            if response.status_code != 200:
                found.failure = f"HTTP {response.status_code}"
    return samples


def _ms(seconds: list[float], cut: int) -> str:
    return f"{statistics.quantiles(seconds, n=100, method='inclusive')[cut - 1] * 1000:.1f}"


def _print_rows(backend: str, samples: dict[str, Samples], size: dict[str, int]) -> None:
    for label, found in samples.items():
        if found.failure is not None:
            print(row(label, backend, found.failure, "", "", "", "", ""), flush=True)
            continue
        p99 = float(_ms(found.wall, 99))
        target = "" if label.startswith("REST") else ("✔" if p99 < TARGET_MS else "✘")
        mark = f"< {TARGET_MS:.0f} ms {target}" if target else "peer"
        print(
            row(
                label,
                backend,
                _ms(found.wall, 50),
                f"**{p99:.1f}**",
                _ms(found.cpu, 50),
                _ms(found.cpu, 99),
                f"{size[label] / 1024:.0f} KiB",
                mark,
            ),
            flush=True,
        )


async def _sizes(client: httpx.AsyncClient, paths: list[tuple[str, str]]) -> dict[str, int]:
    return {label: len((await client.get(path)).content) for label, path in paths}


# orchestration


def _app(settings: Settings) -> FastAPI:
    config = Path(settings.home) / "agentmill.yaml"
    config.write_text(_project_text())
    project = load_project_text(config.read_text(), str(config))
    # Embedded engine (as `agentmill ui`): it executes the one recorded run, and never
    # picks up the seeded history's unfinished runs.
    return create_app(settings, project=project, config_path=config, workers=None)


async def _prepared(app: FastAPI, backend: str) -> tuple[str, str, str]:
    """The recorded run, the seeded history; (detail run id, deep cursor, API key)."""
    services: Services = app.state.services
    started = time.perf_counter()
    detail = await _detail_run(services)
    counts = await _seed(services, detail)
    if backend == "PostgreSQL":  # what autovacuum does soon after a bulk load
        async with services.engine.store.engine.begin() as conn:
            await conn.execute(sa.text("ANALYZE"))
    seeded = ", ".join(f"{n:,} {name}" for name, n in counts.items())
    print(f"<!-- {backend}: seeded {seeded} in {time.perf_counter() - started:.1f} s -->")
    deep = encode_cursor(
        await services.engine.store.get_run(f"hist{HISTORY - 5000:06d}", tenant=TENANT)
    )
    _, secret = await KeyStore(services.engine.store.engine).create(
        tenant=TENANT, role=Role.OPERATOR
    )
    return detail, deep, secret


async def _bench(settings: Settings, backend: str, requests: int, profile: str | None) -> None:
    app = _app(settings)
    lifespan: AbstractAsyncContextManager[None] = app.router.lifespan_context(app)  # type: ignore[assignment]
    with override_models(_model):
        async with lifespan:
            detail, deep, secret = await _prepared(app, backend)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
                await _signed_in(client, secret)
                client.headers["Authorization"] = f"Bearer {secret}"  # for the REST peers
                paths = _paths(detail, deep)
                sizes = await _sizes(client, paths)
                measured = await _measure(client, paths, requests)
                _print_rows(backend, measured, sizes)
                print(f"<!-- {backend}: load average {os.getloadavg()[0]:.1f} at the end -->")
                if profile is not None:
                    await _profiled(client, profile.replace("{id}", detail), requests)


async def _profiled(client: httpx.AsyncClient, path: str, requests: int) -> None:
    import importlib

    pyinstrument: Any = importlib.import_module("pyinstrument")  # pip install pyinstrument
    profiler = pyinstrument.Profiler(interval=0.0005, async_mode="enabled")
    with profiler:
        for _ in range(requests):
            await client.get(path)
    print(profiler.output_text(unicode=True, color=False, show_all=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--store", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--profile", metavar="PATH", help="e.g. / or /runs/{id}")
    args = parser.parse_args()
    print(f"{HISTORY:,} runs of history; {args.requests} requests per page, round-robin")
    header = ("page", "store", "p50 ms", "p99 ms", "CPU p50 ms", "CPU p99 ms", "body", "target p99")
    print(row(*header))
    print(row(*["---"] * len(header)))
    if args.store != "postgresql":
        with sqlite_settings(**UNTHROTTLED) as settings:
            asyncio.run(_bench(settings, "SQLite", args.requests, args.profile))
    if args.store == "sqlite":
        return
    with postgres_settings(**UNTHROTTLED) as pg:
        if pg is None:
            print(row("(all)", "PostgreSQL", "skipped: not reachable", "", "", "", "", ""))
        else:
            asyncio.run(_bench(pg, "PostgreSQL", args.requests, args.profile))


if __name__ == "__main__":
    main()
