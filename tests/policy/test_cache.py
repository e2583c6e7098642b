"""The response cache on real SQLite and PostgreSQL: hits, misses, TTL, eviction, tampering,
concurrency and metrics. Runs of real workflows that hit it: test_cache_runs.py."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest
from pydantic import SecretStr

from agentmill.policy.cache import (
    ResponseCache,
    cache_key,
)
from agentmill.server.metrics import Metrics
from agentmill.store import Store
from agentmill.store.cache import CacheCounts
from tests.policy.cache_support import IDENTITY, SECRET, Clock, OpenCache, counts, execute, rows

# hits and misses


async def test_stored_response_is_a_hit_and_other_keys_miss(
    open_cache: OpenCache, store: Store
) -> None:
    cache = open_cache()
    key = cache_key("t", IDENTITY, "hello")
    assert await cache.get("t", key) is None
    assert await cache.put("t", key, model="openai:gpt-4o", output="hi there", ttl=60)
    hit = await cache.get("t", key)
    assert hit is not None
    assert (hit.output, hit.model) == ("hi there", "openai:gpt-4o")
    other = open_cache(memory_trust=0)  # another process: reads the database
    from_db = await other.get("t", key)
    assert from_db is not None
    assert from_db.output == "hi there"
    assert await other.get("t", cache_key("t", IDENTITY, "hello!")) is None
    await cache.flush()
    await other.flush()
    assert (await counts(store, "t")).to_json() == {
        "hits": 2,
        "misses": 2,
        "sets": 1,
        "evictions": 0,
        "expirations": 0,
        "integrity_failures": 0,
    }
    [row] = await rows(store)
    assert row["hits"] == 2


def test_key_covers_tenant_model_instructions_settings_schema_and_prompt() -> None:
    base = cache_key("t", IDENTITY, "p")
    assert cache_key("t", dict(IDENTITY), "p") == base  # canonical: order does not matter
    variants = [
        cache_key("u", IDENTITY, "p"),
        cache_key("t", IDENTITY, "p "),
        cache_key("t", {**IDENTITY, "model": "openai:gpt-4o-mini"}, "p"),
        cache_key("t", {**IDENTITY, "instructions": "be terse"}, "p"),
        cache_key("t", {**IDENTITY, "settings": {"max_tokens": 10}}, "p"),
        cache_key("t", {**IDENTITY, "output_schema": {"type": "object"}}, "p"),
    ]
    assert len({base, *variants}) == len(variants) + 1


async def test_structured_outputs_are_cached_as_json_values(open_cache: OpenCache) -> None:
    cache = open_cache(memory_trust=0)
    key = cache_key("t", IDENTITY, "grade")
    value = {"score": 7, "tags": ["a", "é"], "ok": True, "none": None}
    assert await cache.put("t", key, model="m", output=value, ttl=60)
    hit = await cache.get("t", key)
    assert hit is not None
    assert hit.output == value
    hit.output["score"] = 0  # a caller's change never reaches the cache
    again = await cache.get("t", key)
    assert again is not None
    assert again.output["score"] == 7


# TTL and eviction


async def test_expired_entry_is_a_miss_counted_and_removed(
    open_cache: OpenCache, store: Store
) -> None:
    clock = Clock()
    cache = open_cache(clock)
    key = cache_key("t", IDENTITY, "p")
    await cache.put("t", key, model="m", output="x", ttl=10)
    clock.now += 9.9
    assert await cache.get("t", key) is not None
    clock.now += 0.2
    assert await cache.get("t", key) is None
    await cache.flush()
    assert await rows(store) == []
    stats = await counts(store, "t")
    assert (stats.hits, stats.misses, stats.expirations) == (1, 1, 1)


async def test_eviction_removes_the_least_used_entries_first(
    open_cache: OpenCache, store: Store
) -> None:
    clock = Clock()
    probe = open_cache(clock)
    await probe.put("t", cache_key("t", IDENTITY, "probe"), model="m", output="v" * 100, ttl=60)
    [row] = await rows(store)
    size = row["size"]
    await execute(store, "DELETE FROM am_cache")
    cache = open_cache(clock, memory_trust=0, cache_max_bytes=3 * size)
    keys = {name: cache_key("t", IDENTITY, name) for name in ("a", "b", "c", "d")}
    for name in ("a", "b", "c"):
        clock.now += 1
        assert await cache.put("t", keys[name], model="m", output="v" * 100, ttl=60)
    for name in ("a", "a", "b", "c"):
        clock.now += 1
        assert await cache.get("t", keys[name]) is not None
    clock.now += 1
    await cache.get("t", keys["a"])  # a: 3 hits, b: 1, c: 1 but used after b
    await cache.flush()
    assert await cache.put("t", keys["d"], model="m", output="v" * 100, ttl=60)
    await cache.flush()
    left = {row["key"] for row in await rows(store)}
    assert left == {keys["a"], keys["c"], keys["d"]}
    assert (await counts(store, "t")).evictions == 1
    assert await cache.get("t", keys["b"]) is None


async def test_expired_entries_go_before_useful_ones(open_cache: OpenCache, store: Store) -> None:
    clock = Clock()
    cache = open_cache(clock, memory_trust=0, cache_max_bytes=1000)
    old, fresh, new = (cache_key("t", IDENTITY, p) for p in ("old", "fresh", "new"))
    await cache.put("t", old, model="m", output="o" * 300, ttl=5)
    await cache.put("t", fresh, model="m", output="f" * 300, ttl=600)
    for _ in range(3):
        await cache.get("t", old)
    await cache.flush()
    clock.now += 10
    await cache.put("t", new, model="m", output="n" * 300, ttl=600)
    await cache.flush()
    assert {row["key"] for row in await rows(store)} == {fresh, new}
    stats = await counts(store, "t")
    assert (stats.expirations, stats.evictions) == (1, 0)


async def test_a_response_larger_than_the_cache_is_not_stored(
    open_cache: OpenCache, store: Store
) -> None:
    cache = open_cache(cache_max_bytes=500)
    key = cache_key("t", IDENTITY, "p")
    assert not await cache.put("t", key, model="m", output="x" * 1000, ttl=60)
    assert await rows(store) == []


# tampering


TAMPERING = {
    "value": "UPDATE am_cache SET value = '\"forged\"'",
    "expiry": "UPDATE am_cache SET expires_at = expires_at + 86400",
    "model": "UPDATE am_cache SET model = 'openai:gpt-4o-mini'",
    "signature": "UPDATE am_cache SET signature = :forged",
}


@pytest.mark.parametrize("edit", sorted(TAMPERING))
async def test_an_edited_entry_is_discarded_counted_and_logged(
    edit: str, open_cache: OpenCache, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    writer = open_cache()
    key = cache_key("t", IDENTITY, "p")
    await writer.put("t", key, model="openai:gpt-4o", output="genuine", ttl=60)
    await execute(store, TAMPERING[edit], forged="0" * 64)
    reader = open_cache()  # another process, with nothing in memory
    with caplog.at_level(logging.WARNING, logger="agentmill.cache"):
        assert await reader.get("t", key) is None
    await reader.flush()
    assert await rows(store) == []
    stats = await counts(store, "t")
    assert (stats.hits, stats.misses, stats.integrity_failures) == (0, 1, 1)
    [message] = [r.getMessage() for r in caplog.records if r.name == "agentmill.cache"]
    assert "integrity" in message
    assert key[:12] in message
    assert SECRET not in message
    assert SECRET[:16] not in message


async def test_an_entry_signed_with_another_secret_is_rejected(
    open_cache: OpenCache, store: Store
) -> None:
    key = cache_key("t", IDENTITY, "p")
    await open_cache(cache_secret=SecretStr("another-secret-of-some-length")).put(
        "t", key, model="m", output="x", ttl=60
    )
    assert await open_cache().get("t", key) is None
    assert await rows(store) != []  # discarded on the next write
    reader = open_cache()
    await reader.get("t", key)
    await reader.flush()
    assert await rows(store) == []


async def test_an_entry_moved_to_another_tenant_is_rejected(
    open_cache: OpenCache, store: Store
) -> None:
    key = cache_key("acme", IDENTITY, "p")
    await open_cache().put("acme", key, model="m", output="acme's answer", ttl=60)
    await execute(store, "UPDATE am_cache SET tenant = 'globex'")
    reader = open_cache()
    assert await reader.get("globex", key) is None
    assert await reader.get("acme", key) is None
    await reader.flush()
    assert (await counts(store, "globex")).integrity_failures == 1
    assert (await counts(store, "acme")).integrity_failures == 0
    assert await rows(store) == []


async def test_a_tampered_row_is_noticed_by_a_running_process_after_its_memory_window(
    open_cache: OpenCache, store: Store
) -> None:
    clock = Clock()
    cache = open_cache(clock, memory_trust=5.0)
    key = cache_key("t", IDENTITY, "p")
    await cache.put("t", key, model="m", output="genuine", ttl=600)
    await execute(store, TAMPERING["value"])
    hit = await cache.get("t", key)
    assert hit is not None
    assert hit.output == "genuine"  # the verified copy in memory
    clock.now += 5.1
    assert await cache.get("t", key) is None


# concurrency


async def test_stats_stay_exact_under_many_tasks_threads_and_processes(
    open_cache: OpenCache, store: Store
) -> None:
    caches = [open_cache(memory_trust=0), open_cache()]  # two "processes", DB and memory
    keys = [cache_key("t", IDENTITY, f"p{i}") for i in range(8)]
    tally = {"lookups": 0, "hits": 0, "puts": 0}
    lock = threading.Lock()

    async def worker(cache: ResponseCache, seed: int) -> None:
        lookups = hits = puts = 0
        for i in range(25):
            key = keys[(seed + i) % len(keys)]
            lookups += 1
            if await cache.get("t", key) is not None:
                hits += 1
            elif i % 3 == 0:
                assert await cache.put("t", key, model="m", output=f"v{seed}", ttl=600)
                puts += 1
        with lock:
            tally["lookups"] += lookups
            tally["hits"] += hits
            tally["puts"] += puts

    async def tasks(offset: int) -> None:
        async with asyncio.TaskGroup() as group:
            for n in range(20):
                group.create_task(worker(caches[(offset + n) % 2], offset + n))

    threads = [threading.Thread(target=asyncio.run, args=(tasks(100 * n),)) for n in range(1, 4)]
    for thread in threads:
        thread.start()
    await tasks(0)
    for thread in threads:
        await asyncio.to_thread(thread.join)
    for cache in caches:
        await cache.flush()
    stats = await counts(store, "t")
    assert tally["lookups"] == 4 * 20 * 25
    assert stats.hits + stats.misses == tally["lookups"]
    assert stats.hits == tally["hits"]
    assert stats.sets == tally["puts"]
    assert stats.integrity_failures == 0
    assert sum(c.unwritten().get("t", CacheCounts()).lookups for c in caches) == 0
    found = await rows(store)
    assert sum(row["hits"] for row in found) == stats.hits


# metrics


async def test_metrics_show_cache_counters_per_tenant(open_cache: OpenCache, store: Store) -> None:
    cache = open_cache()
    key = cache_key("acme", IDENTITY, "p")
    await cache.put("acme", key, model="m", output="x", ttl=60)
    await cache.get("acme", key)
    await cache.get("acme", cache_key("acme", IDENTITY, "q"))
    await cache.flush()
    text = (await Metrics().render(store)).decode()
    assert 'agentmill_cache_hits_total{tenant="acme"} 1.0' in text
    assert 'agentmill_cache_misses_total{tenant="acme"} 1.0' in text
    assert 'agentmill_cache_sets_total{tenant="acme"} 1.0' in text
    assert 'agentmill_cache_integrity_failures_total{tenant="acme"} 0.0' in text
    assert 'agentmill_cache_entries{tenant="acme"} 1.0' in text
