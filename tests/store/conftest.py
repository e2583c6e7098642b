"""A store of its own per test, on SQLite or PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from agentmill.settings import Settings
from agentmill.store import Store


@pytest.fixture
async def store(isolated_settings: Settings) -> AsyncIterator[Store]:
    """A migrated, empty database (its own, on PostgreSQL too): queries over all tenants
    see only the test's rows."""
    opened = await Store.open(isolated_settings.resolved_database_url)
    try:
        yield opened
    finally:
        await opened.close()
