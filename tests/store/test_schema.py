"""Migrations create agentmill's tables on both backends, and the fast path knows the head."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.config import Config
from alembic.script import ScriptDirectory

from agentmill.settings import Settings
from agentmill.store import Store
from agentmill.store.db import SCHEMA_REVISION, create_sync_engine


def test_schema_revision_constant_is_alembic_head() -> None:
    config = Config()
    config.set_main_option("script_location", "src/agentmill/store/migrations")
    assert ScriptDirectory.from_config(config).get_current_head() == SCHEMA_REVISION


async def test_open_creates_tables_and_is_idempotent(settings: Settings) -> None:
    url = settings.resolved_database_url
    for _ in range(2):
        store = await Store.open(url)
        assert isinstance(await store.list_runs(limit=1), list)
        await store.close()
    engine = create_sync_engine(url)
    with engine.connect() as conn:
        tables = set(sa.inspect(conn).get_table_names())
        version = conn.execute(sa.text("SELECT version_num FROM am_alembic_version")).scalar()
    engine.dispose()
    assert {"am_runs", "am_steps", "am_events"} <= tables
    assert version == SCHEMA_REVISION


async def test_sqlite_store_uses_wal(sqlite_settings: Settings) -> None:
    store = await Store.open(sqlite_settings.resolved_database_url)
    await store.close()
    engine = create_sync_engine(sqlite_settings.resolved_database_url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    engine.dispose()
