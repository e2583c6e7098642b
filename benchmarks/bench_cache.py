"""Response cache hit latency (target: p50 under 1 ms on SQLite).

Measured: `ResponseCache.get` of an existing entry (signature checked, JSON decoded) reading
the database every time (`memory_trust=0`) on SQLite and PostgreSQL, and from the
in-process layer of verified entries; `CachedAgent.run` on a hit (key hashing, lookup,
streaming replay into a context that drops the text); and, for comparison, the same
primary-key read through the store's async SQLAlchemy engine, which the cache does not use.
Floor: a dict lookup plus an HMAC-SHA256 check of the value.

Run: python -m benchmarks.bench_cache
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import math
import random
import time
from collections.abc import Awaitable, Callable

import sqlalchemy as sa
from pydantic import SecretStr

from agentmill.agents.base import StepRequest
from agentmill.agents.llm import LLMAgent
from agentmill.policy.cache import CachedAgent, ResponseCache, cache_key
from agentmill.settings import Settings
from agentmill.store import Store
from benchmarks._common import fake_model, postgres_settings, row, sqlite_settings

SECRET = "bench-cache-secret-0123456789abcdef"
ENTRIES = 2000
LOOKUPS = 3000
VALUE = "lorem ipsum dolor sit amet " * 40  # ~1 KiB, a short answer
LABEL = "openai:gpt-4o"
IDENTITY = {"model": LABEL, "instructions": "be brief", "settings": {}, "output_schema": None}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def fmt(seconds: float) -> str:
    return f"{seconds * 1e6:,.0f} µs" if seconds < 0.001 else f"{seconds * 1e3:.2f} ms"


async def timed(call: Callable[[], Awaitable[object]], n: int = LOOKUPS) -> tuple[float, float]:
    for _ in range(50):  # warm connections and threads
        await call()
    times: list[float] = []
    for _ in range(n):
        start = time.perf_counter()
        await call()
        times.append(time.perf_counter() - start)
    return percentile(times, 0.5), percentile(times, 0.99)


def floor() -> tuple[float, float]:
    secret = SECRET.encode()
    table = {f"k{i}": VALUE for i in range(ENTRIES)}
    message = json.dumps([1, "t", "k", "m", 1.0, VALUE]).encode()
    signature = hmac.new(secret, message, hashlib.sha256).hexdigest()
    times: list[float] = []
    for i in range(LOOKUPS):
        start = time.perf_counter()
        value = table[f"k{i % ENTRIES}"]
        msg = json.dumps([1, "t", "k", "m", 1.0, value]).encode()
        hmac.compare_digest(hmac.new(secret, msg, hashlib.sha256).hexdigest(), signature)
        times.append(time.perf_counter() - start)
    return percentile(times, 0.5), percentile(times, 0.99)


class _Drop:
    async def emit_text(self, text: str) -> None:
        return None


async def measure(settings: Settings, backend: str) -> list[str]:
    settings = settings.model_copy(update={"cache_secret": SecretStr(SECRET)})
    store = await Store.open(settings.resolved_database_url)
    keys = [cache_key("bench", IDENTITY, f"prompt {i}") for i in range(ENTRIES)]
    writer = ResponseCache.open(settings)
    stored = [writer.put("bench", k, model=LABEL, output=VALUE, ttl=3600) for k in keys]
    assert all(await asyncio.gather(*stored))  # group-committed by the writer thread
    await writer.aclose()
    rows: list[str] = []
    pick = random.Random(7).choice

    database = ResponseCache.open(settings, memory_trust=0)
    p50, p99 = await timed(lambda: database.get("bench", pick(keys)))
    rows.append(row(f"hit, {backend} (read every time)", fmt(p50), fmt(p99)))
    memory = ResponseCache.open(settings)
    for key in keys:
        await memory.get("bench", key)
    p50, p99 = await timed(lambda: memory.get("bench", pick(keys)))
    rows.append(row(f"hit, in-process layer ({backend} behind)", fmt(p50), fmt(p99)))

    llm = LLMAgent(model=fake_model(0), label=LABEL, instructions="be brief")
    agent = CachedAgent(llm, cache=database, tenant="bench", identity=IDENTITY, ttl=3600)
    prompts = [f"prompt {i}" for i in range(ENTRIES)]

    async def run_hit() -> None:
        request = StepRequest(run_id="r", step_id="s", prompt=pick(prompts))
        await agent.run(request, _Drop())

    p50, p99 = await timed(run_hit)
    rows.append(row(f"`CachedAgent.run` hit, {backend} (read every time)", fmt(p50), fmt(p99)))

    query = sa.text(
        "SELECT value, signature, expires_at FROM am_cache WHERE tenant = :t AND key = :k"
    )

    async def via_sqlalchemy() -> None:
        async with store.engine.connect() as conn:
            (await conn.execute(query, {"t": "bench", "k": pick(keys)})).first()

    p50, p99 = await timed(via_sqlalchemy, n=LOOKUPS // 3)
    rows.append(row(f"same read via async SQLAlchemy, {backend} (not used)", fmt(p50), fmt(p99)))
    for cache in (database, memory):
        await cache.aclose()
    await store.close()
    return rows


async def main() -> None:
    print(f"{ENTRIES} entries of ~1 KiB, {LOOKUPS} lookups of random keys, one task\n")
    print(row("measure", "p50", "p99"))
    print(row("---", "---", "---"))
    p50, p99 = floor()
    print(row("floor: dict lookup + HMAC-SHA256 check", fmt(p50), fmt(p99)))
    with sqlite_settings() as settings:
        for line in await measure(settings, "SQLite"):
            print(line, flush=True)
    with postgres_settings() as settings:
        if settings is None:
            print(row("PostgreSQL", "not reachable", "-"))
        else:
            for line in await measure(settings, "PostgreSQL"):
                print(line, flush=True)


if __name__ == "__main__":
    asyncio.run(main())
