"""Database connections for agentmill's tables: URL mapping, engines, migrations."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from agentmill.errors import MissingDependencyError, UserError

__all__ = [
    "async_url",
    "create_engine",
    "create_sync_engine",
    "database_error",
    "migrate",
    "prepare_sqlite_file",
    "redact_url",
    "sync_url",
]

_DRIVERS = {"postgresql", "postgres", "sqlite"}


def _scheme(url: str) -> str:
    scheme = url.split("://", 1)[0].split("+", 1)[0]
    if scheme not in _DRIVERS:
        raise UserError(
            f"unsupported database URL scheme {scheme!r}: "
            "set AGENTMILL_DATABASE_URL to postgresql://user@host:5432/db, or unset it for SQLite"
        )
    return "postgresql" if scheme == "postgres" else scheme


def _rest(url: str) -> str:
    return url.split("://", 1)[1]


def async_url(url: str) -> str:
    """The SQLAlchemy async URL for a plain `sqlite:///` or `postgresql://` URL."""
    driver = "sqlite+aiosqlite" if _scheme(url) == "sqlite" else "postgresql+psycopg"
    return f"{driver}://{_rest(url)}"


def sync_url(url: str) -> str:
    """The SQLAlchemy sync URL (used for migrations and by DBOS)."""
    driver = "sqlite" if _scheme(url) == "sqlite" else "postgresql+psycopg"
    return f"{driver}://{_rest(url)}"


def redact_url(url: str) -> str:
    """A database URL with its password hidden, safe to print."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at or ":" not in creds:
        return url
    return f"{scheme}{sep}{creds.split(':', 1)[0]}:***@{host}"


def database_error(url: str, exc: BaseException) -> UserError:
    """The user-facing error for a database that cannot be opened."""
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    if _scheme(url) == "sqlite":
        fix = "check AGENTMILL_HOME (the directory of the SQLite file) is writable"
    else:
        fix = "check AGENTMILL_DATABASE_URL and that the server is running"
    return UserError(f"cannot open the database {redact_url(url)}: {reason}; {fix}")


def _require_psycopg() -> None:
    try:
        import psycopg  # noqa: F401  # pyright: ignore[reportUnusedImport]
    except ImportError as exc:
        raise MissingDependencyError(
            "PostgreSQL support is not installed: pip install 'agentmill[postgres]'"
        ) from exc


def prepare_sqlite_file(url: str) -> None:
    """Create the SQLite file's directory and switch the file to WAL (persistent)."""
    if _scheme(url) != "sqlite":
        return
    path = Path(_rest(url)[1:])  # sqlite:///rel.db and sqlite:////abs/file.db
    path.parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(sync_url(url))
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA journal_mode=WAL")
    engine.dispose()


def _on_sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def create_engine(url: str) -> AsyncEngine:
    """An async engine for agentmill's tables, tuned for the backend."""
    if _scheme(url) == "postgresql":
        _require_psycopg()
        return create_async_engine(
            async_url(url), pool_size=10, max_overflow=10, pool_pre_ping=True
        )
    engine = create_async_engine(async_url(url), pool_size=5, max_overflow=5)
    event.listen(engine.sync_engine, "connect", _on_sqlite_connect)
    return engine


def create_sync_engine(url: str, *, pool_size: int = 2, fast: bool = False) -> sa.Engine:
    """A blocking engine, for the journal's writer thread, migrations and short
    transactions run on worker threads. `fast` (PostgreSQL): no ping before each use (a
    unit that finds its connection dropped is run again on a new one by
    `store/reconnect.py`) and commits that do not wait for the WAL flush, as the journal
    does (see docs/design.md)."""
    if _scheme(url) == "postgresql":
        _require_psycopg()
        options = {"options": "-c synchronous_commit=off"} if fast else {}
        return sa.create_engine(
            sync_url(url),
            pool_size=pool_size,
            max_overflow=pool_size,
            pool_pre_ping=not fast,
            connect_args=options,
        )
    engine = sa.create_engine(sync_url(url))
    event.listen(engine, "connect", _on_sqlite_connect)
    return engine


SCHEMA_REVISION = "0006"
"""The newest migration; a test checks it is Alembic's head."""
VERSION_TABLE = "am_alembic_version"


def migrate(url: str) -> None:
    """Bring agentmill's tables to the newest schema (blocking; call via a thread)."""
    if _scheme(url) == "postgresql":
        _require_psycopg()
    prepare_sqlite_file(url)
    if _schema_revision(url) == SCHEMA_REVISION:
        return  # the common case; importing Alembic alone costs ~0.3 s
    _upgrade(url)


def _schema_revision(url: str) -> str | None:
    engine = create_sync_engine(url)
    try:
        with engine.connect() as connection:
            if not sa.inspect(connection).has_table(VERSION_TABLE):
                return None
            query = sa.text(f"SELECT version_num FROM {VERSION_TABLE}")  # noqa: S608
            return connection.execute(query).scalar()
    finally:
        engine.dispose()


def _upgrade(url: str) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option(
        "script_location", str(resources.files("agentmill.store") / "migrations")
    )
    engine = create_sync_engine(url)
    try:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    finally:
        engine.dispose()
