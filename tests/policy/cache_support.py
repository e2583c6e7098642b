"""Shared pieces of the response cache tests: the secret, caches on the test's database,
and reads of its rows and counters. The fixtures are registered in tests/policy/conftest.py."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import SecretStr

from agentmill.policy.cache import ResponseCache
from agentmill.settings import Settings
from agentmill.store import Store
from agentmill.store.cache import CacheCounts, read_stats

__all__ = [
    "IDENTITY",
    "SECRET",
    "Clock",
    "OpenCache",
    "cache_settings",
    "counts",
    "execute",
    "open_cache",
    "rows",
    "store",
]

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
