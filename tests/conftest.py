"""Shared fixtures: settings per test, PostgreSQL databases, an engine on each backend."""

from __future__ import annotations

import contextlib
import os
import signal
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from pathlib import Path

import pytest

from agentmill.engine.engine import Engine
from agentmill.settings import Settings

PG_ADMIN_URL = os.environ.get("AGENTMILL_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")

# A suite started in the background by a shell without job control (`make test &`, nohup)
# inherits SIGINT ignored, and so would every CLI it starts: the Ctrl-C tests play a user at
# a terminal, whose processes take SIGINT. Children inherit an ignored signal, not a handler.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _pg_available() -> str | None:
    """None when PostgreSQL answers, else the reason it does not."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed"
    try:
        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3):
            return None
    except psycopg.OperationalError as exc:
        return f"PostgreSQL not reachable at {PG_ADMIN_URL}: {exc}"


_PG_SKIP_REASON = _pg_available()


def _create_database(name: str, *, template: str | None = None) -> str:
    import psycopg
    from psycopg import sql

    statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template is not None:
        statement += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(statement)
    return f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"


def _drop_database(name: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped afterwards."""
    if _PG_SKIP_REASON is not None:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required in CI: {_PG_SKIP_REASON}")
        pytest.skip(_PG_SKIP_REASON)
    name = f"agentmill_test_{uuid.uuid4().hex[:10]}"
    yield _create_database(name)
    _drop_database(name)


@pytest.fixture(scope="session")
def pg_template(pg_url: str) -> Iterator[str]:
    """A migrated, empty database to copy: a fresh database per test costs one CREATE."""
    from agentmill.store.db import migrate

    name = f"{pg_url.rsplit('/', 1)[1]}_template"
    migrate(_create_database(name))
    yield name
    _drop_database(name)


@pytest.fixture
def fresh_pg_url(pg_url: str, pg_template: str) -> Iterator[str]:
    """A database of its own for one test: server workers adopt any orphaned run they
    find, so tests of server mode must not share a database with other tests' leftovers."""
    name = f"agentmill_t_{uuid.uuid4().hex[:12]}"
    yield _create_database(name, template=pg_template)
    _drop_database(name)


def _settings(request: pytest.FixtureRequest, tmp_path: Path, database: str) -> Settings:
    home = tmp_path / ".agentmill"
    if request.param == "postgres":
        url = request.getfixturevalue(database)
        return Settings(home=home, database_url=url, heartbeat_interval=0.5)
    return Settings(home=home, heartbeat_interval=0.5)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Settings on SQLite (a file under tmp_path) or on the session's PostgreSQL database."""
    return _settings(request, tmp_path, "pg_url")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def isolated_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Like `settings`, but on PostgreSQL with a database of the test's own."""
    return _settings(request, tmp_path, "fresh_pg_url")


@pytest.fixture
def sqlite_settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / ".agentmill", heartbeat_interval=0.5)


@contextlib.asynccontextmanager
async def started_engine(settings: Settings) -> AsyncGenerator[Engine]:
    """An engine with workers (DBOS launched), stopped when the block ends."""
    engine = Engine(settings)
    await engine.start()
    try:
        yield engine
    finally:
        await engine.stop()


@pytest.fixture
async def engine(settings: Settings) -> AsyncIterator[Engine]:
    """A started engine with workers (DBOS launched), stopped after the test."""
    async with started_engine(settings) as started:
        yield started


@pytest.fixture
async def sqlite_engine(sqlite_settings: Settings) -> AsyncIterator[Engine]:
    """A started engine on SQLite only, for tests whose subject is not the database."""
    async with started_engine(sqlite_settings) as started:
        yield started


@pytest.fixture
async def isolated_engine(isolated_settings: Settings) -> AsyncIterator[Engine]:
    """A started engine on a database of the test's own (SQLite or PostgreSQL), for tests
    that count rows across the whole database."""
    async with started_engine(isolated_settings) as started:
        yield started
