"""The response cache on real SQLite and PostgreSQL: hits, misses, TTL, eviction, tampering,
tenants, concurrency, and runs of real workflows that hit it."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import SecretStr
from pydantic_ai.models.test import TestModel

from agentmill.agents.base import StepRequest, StepResult
from agentmill.agents.llm import LLMAgent
from agentmill.agents.models import override_models
from agentmill.engine.engine import Engine
from agentmill.engine.plan import build_plan
from agentmill.errors import UserError
from agentmill.policy.cache import (
    CachedAgent,
    CacheSecretMissing,
    ResponseCache,
    cache_key,
    check_cache_secret,
    close_response_cache,
)
from agentmill.server.metrics import Metrics
from agentmill.settings import Settings
from agentmill.spec.loader import load_project_text
from agentmill.store import RunStatus, Store
from agentmill.store.cache import CacheCounts, read_stats
from tests.engine.helpers import run_yaml
from tests.fakes import ScriptedModel

SECRET = "0123456789abcdef" * 4
IDENTITY: dict[str, Any] = {"model": "openai:gpt-4o", "instructions": "", "settings": {}}


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def cache_settings(isolated_settings: Settings) -> Settings:
    return isolated_settings.model_copy(update={"cache_secret": SecretStr(SECRET)})


@pytest.fixture
async def store(cache_settings: Settings) -> AsyncIterator[Store]:
    store = await Store.open(cache_settings.resolved_database_url)
    try:
        yield store
    finally:
        await store.close()


OpenCache = Callable[..., ResponseCache]


@pytest.fixture
async def open_cache(cache_settings: Settings, store: Store) -> AsyncIterator[OpenCache]:
    """Caches on the test's database (each like another process); closed afterwards."""
    opened: list[ResponseCache] = []

    def factory(
        clock: Callable[[], float] | None = None, *, memory_trust: float = 5.0, **update: Any
    ) -> ResponseCache:
        settings = cache_settings.model_copy(update=update)
        cache = ResponseCache.open(settings, memory_trust=memory_trust, clock=clock or Clock())
        opened.append(cache)
        return cache

    yield factory
    for cache in opened:
        await cache.aclose()


async def counts(store: Store, tenant: str) -> CacheCounts:
    found = await read_stats(store.engine, tenant=tenant)
    return found[0].counts if found else CacheCounts()


async def rows(store: Store) -> list[dict[str, Any]]:
    async with store.engine.connect() as conn:
        result = await conn.execute(sa.text("SELECT * FROM am_cache ORDER BY tenant, key"))
        return [dict(row._mapping) for row in result]


async def execute(store: Store, sql: str, **values: Any) -> None:
    async with store.engine.begin() as conn:
        await conn.execute(sa.text(sql), values)


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


# the secret


PROJECT = """
version: 1
agents:
  writer:
    model: openai:gpt-4o
    instructions: be brief
    cache: {ttl: 1h}
  terse:
    model: openai:gpt-4o
    instructions: be terse
    cache: {ttl: 1h}
  other:
    model: anthropic:claude-sonnet-4-5
    instructions: be brief
    cache: {ttl: 1h}
  grader:
    model: openai:gpt-4o
    cache: {ttl: 1h}
    output:
      type: object
      properties: {score: {type: integer}}
      required: [score]
  plain:
    model: openai:gpt-4o
    instructions: be brief
workflows:
  w:
    inputs: {topic: {type: string, default: cats}}
    steps:
      - {id: a, agent: writer, prompt: "write about {{ inputs.topic }}"}
  terse:
    steps:
      - {id: a, agent: terse, prompt: "write about cats"}
  other:
    steps:
      - {id: a, agent: other, prompt: "write about cats"}
  grade:
    steps:
      - {id: g, agent: grader, prompt: "grade cats"}
  plain:
    steps:
      - {id: a, agent: plain, prompt: "write about cats"}
"""


def test_a_missing_secret_is_refused_with_how_to_make_one(tmp_path: Any) -> None:
    spec = load_project_text(PROJECT, "test.yaml").spec
    settings = Settings(home=tmp_path)
    with pytest.raises(CacheSecretMissing) as caught:
        check_cache_secret(build_plan(spec, "w"), settings)
    message = str(caught.value)
    assert "AGENTMILL_CACHE_SECRET" in message
    assert "python -c 'import secrets; print(secrets.token_hex(32))'" in message
    assert "'writer'" in message
    assert isinstance(caught.value, UserError)
    short = settings.model_copy(update={"cache_secret": SecretStr("short")})
    with pytest.raises(CacheSecretMissing, match="shorter than 16"):
        check_cache_secret(build_plan(spec, "w"), short)
    check_cache_secret(build_plan(spec, "plain"), settings)  # no cache, no secret needed
    with_secret = settings.model_copy(update={"cache_secret": SecretStr(SECRET)})
    check_cache_secret(build_plan(spec, "w"), with_secret)


async def test_submit_refuses_a_cached_workflow_without_a_secret(engine: Engine) -> None:
    spec = load_project_text(PROJECT, "test.yaml").spec
    before = await engine.store.list_runs(limit=1000)
    with pytest.raises(UserError, match="AGENTMILL_CACHE_SECRET"):
        await engine.submit(spec, "w", {})
    assert await engine.store.list_runs(limit=1000) == before  # the PG database is shared


# whole runs


@pytest.fixture
async def cache_engine(cache_settings: Settings) -> AsyncIterator[Engine]:
    engine = Engine(cache_settings)
    await engine.start()
    try:
        yield engine
    finally:
        if engine._executor is not None:
            await close_response_cache(engine._executor.policies)
        await engine.stop()


@pytest.fixture
def model() -> Iterator[ScriptedModel]:
    scripted = ScriptedModel(reply=lambda prompt: " ".join([f"about {prompt}"] * 60))
    with override_models(lambda label: scripted.model(label)):
        yield scripted


async def test_a_second_identical_run_makes_no_model_call_and_replays_the_stream(
    cache_engine: Engine, model: ScriptedModel
) -> None:
    first, _ = await run_yaml(cache_engine, PROJECT, "w")
    second, events = await run_yaml(cache_engine, PROJECT, "w")
    assert first.status is RunStatus.SUCCEEDED, first.error
    assert second.status is RunStatus.SUCCEEDED, second.error
    assert model.calls == ["write about cats"]
    [step] = await cache_engine.store.steps(second.id)
    assert step.output == (await cache_engine.store.steps(first.id))[0].output
    assert step.model == "openai:gpt-4o"
    assert step.cost_usd == 0.0
    assert step.usage == {
        "input_tokens": 0,
        "output_tokens": 0,
        "cache_read_tokens": 0,
        "requests": 0,
    }
    assert step.details is not None
    assert step.details["cached"] is True
    assert (
        step.details["cache_key"]
        == cache_key(
            "default",
            {
                "model": "openai:gpt-4o",
                "instructions": "be brief",
                "settings": {},
                "output_schema": None,
            },
            "write about cats",
        )[:12]
    )
    chunks = [e.data["text"] for e in events if e.kind == "step_output"]
    assert len(chunks) > 1
    assert "".join(chunks) == step.output
    finished = next(e for e in events if e.kind == "step_finished")
    assert finished.data["details"]["cached"] is True


async def test_other_prompt_instructions_or_model_miss(
    cache_engine: Engine, model: ScriptedModel
) -> None:
    await run_yaml(cache_engine, PROJECT, "w")
    await run_yaml(cache_engine, PROJECT, "w", {"topic": "dogs"})
    await run_yaml(cache_engine, PROJECT, "terse")
    await run_yaml(cache_engine, PROJECT, "other")
    await run_yaml(cache_engine, PROJECT, "plain")
    await run_yaml(cache_engine, PROJECT, "plain")  # not cached: calls every time
    assert model.calls == ["write about cats", "write about dogs"] + ["write about cats"] * 4
    await run_yaml(cache_engine, PROJECT, "terse")
    await run_yaml(cache_engine, PROJECT, "other")
    assert len(model.calls) == 6


async def test_structured_output_runs_are_cached(cache_engine: Engine) -> None:
    calls: list[str] = []

    def factory(label: str) -> TestModel:
        calls.append(label)
        return TestModel(custom_output_args={"score": 7})

    with override_models(factory):
        first, _ = await run_yaml(cache_engine, PROJECT, "grade")
        second, events = await run_yaml(cache_engine, PROJECT, "grade")
    assert first.status is RunStatus.SUCCEEDED, first.error
    [step] = await cache_engine.store.steps(second.id)
    assert step.output == {"score": 7}
    assert step.details is not None
    assert step.details["cached"] is True
    assert not [e for e in events if e.kind == "step_output"]


async def test_tenants_never_share_entries(
    cache_engine: Engine, model: ScriptedModel, store: Store
) -> None:
    spec = load_project_text(PROJECT, "test.yaml").spec
    for tenant in ("acme", "globex", "acme", "globex"):
        run = await cache_engine.submit(spec, "w", {}, tenant=tenant)
        assert (await cache_engine.wait(run.id)).status is RunStatus.SUCCEEDED
    assert model.calls == ["write about cats"] * 2
    found = await rows(store)
    assert sorted(row["tenant"] for row in found) == ["acme", "globex"]
    acme_key = next(row["key"] for row in found if row["tenant"] == "acme")
    cache = ResponseCache.open(cache_engine.settings, memory_trust=0)
    try:
        assert await cache.get("globex", acme_key) is None  # globex can never read acme's row
    finally:
        await cache.aclose()


# robustness


class _Context:
    def __init__(self) -> None:
        self.texts: list[str] = []

    async def emit_text(self, text: str) -> None:
        self.texts.append(text)


def _request(prompt: str) -> StepRequest:
    return StepRequest(run_id="r", step_id="s", prompt=prompt)


async def test_a_failing_database_never_fails_the_step(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(home=tmp_path / "unmigrated", cache_secret=SecretStr(SECRET))
    (tmp_path / "unmigrated").mkdir()
    cache = ResponseCache.open(settings)  # no am_cache table there: every query fails
    scripted = ScriptedModel()
    llm = LLMAgent(model=scripted.model(), label="openai:gpt-4o")
    agent = CachedAgent(llm, cache=cache, tenant="t", identity=llm.identity(), ttl=60)
    try:
        with caplog.at_level(logging.WARNING, logger="agentmill.cache"):
            for _ in range(2):
                result = await agent.run(_request("p"), _Context())
                assert result.output == "echo: p"
    finally:
        await cache.aclose()
    assert "response cache read failed" in caplog.text
    assert "response cache write failed" in caplog.text


async def test_answers_of_a_fallback_model_are_not_cached(
    open_cache: OpenCache, store: Store
) -> None:
    cache = open_cache()
    scripted = ScriptedModel()
    fallback = LLMAgent(model=scripted.model(), label="anthropic:claude-sonnet-4-5")
    agent = CachedAgent(fallback, cache=cache, tenant="t", identity=IDENTITY, ttl=60)
    result: StepResult = await agent.run(_request("p"), _Context())
    assert result.model == "anthropic:claude-sonnet-4-5"
    await agent.run(_request("p"), _Context())
    assert len(scripted.calls) == 2
    assert await rows(store) == []


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
