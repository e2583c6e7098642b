"""Shared pieces of the benchmarks: a fake model with fixed latency, settings, printing."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Generator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic_ai.messages import ModelMessage
from pydantic_ai.models.function import AgentInfo, FunctionModel

from agentmill.engine.engine import Engine
from agentmill.settings import Settings
from agentmill.spec.models import ProjectSpec

PG_ADMIN_URL = os.environ.get("AGENTMILL_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")


def fake_model(latency: float) -> FunctionModel:
    """Answers `ok` after `latency` seconds (no sleep at all for 0)."""

    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
        if latency:
            await asyncio.sleep(latency)
        yield "ok"

    return FunctionModel(stream_function=stream, model_name="fake")


@contextmanager
def sqlite_settings(**overrides: object) -> Generator[Settings]:
    home = Path(tempfile.mkdtemp(prefix="agentmill-bench-"))
    try:
        yield Settings(home=home, **overrides)  # type: ignore[arg-type]
    finally:
        shutil.rmtree(home, ignore_errors=True)


@contextmanager
def postgres_settings(**overrides: object) -> Generator[Settings | None]:
    """Settings on a fresh PostgreSQL database, or None when PostgreSQL is not there."""
    try:
        import psycopg
        from psycopg import sql

        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except Exception:
        yield None
        return
    name = f"agentmill_bench_{uuid.uuid4().hex[:8]}"
    admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    home = Path(tempfile.mkdtemp(prefix="agentmill-bench-"))
    try:
        yield Settings(home=home, database_url=url, **overrides)  # type: ignore[arg-type]
    finally:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        admin.close()
        shutil.rmtree(home, ignore_errors=True)


def median(values: list[float]) -> float:
    return statistics.median(values)


def row(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def execution_time(engine: Engine, project: ProjectSpec, inputs: dict[str, Any]) -> float:
    """Wall time of a run from its first event to its last (excludes queue pickup)."""
    run = await engine.submit(project, "w", inputs)
    first = last = 0.0
    async for _ in engine.follow(run.id):
        first = first or time.perf_counter()
        last = time.perf_counter()
    finished = await engine.store.get_run(run.id)
    assert finished.status == "succeeded", finished.error
    return last - first
