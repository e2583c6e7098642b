"""The response cache's tables: entries (`am_cache`) and per-tenant counters (`am_cache_stats`).

A hit is one primary-key read on a DB-API connection of the cache's own, run on a small
thread pool: ~10 µs of SQLite or ~80 µs of local PostgreSQL plus a thread hop, where the
async engine costs several hundred µs per statement. Everything else (new entries, hit
counts, counters, discarded entries, eviction) is queued and written by one writer thread
in batched transactions, like the journal; `commit()` waits until what was queued is written.

Signing and checking entries is the caller's business (`policy/cache.py`): this module
stores rows and counts, and never trusts or interprets a value.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from agentmill.store.reconnect import connection_lost, reconnecting
from agentmill.store.tables import cache_entries, cache_stats

__all__ = [
    "CacheBackend",
    "CacheCounts",
    "CacheRow",
    "TenantCacheStats",
    "clear_entries",
    "read_stats",
]

logger = logging.getLogger("agentmill.cache")

_Key = tuple[str, str]
_Waiter = tuple[asyncio.AbstractEventLoop, "asyncio.Future[None]"]
_WRITE_TRIES = 3
_EVICT_PAGE = 200
_EXIT_WRITE_TIMEOUT = 10.0
_MAX_REQUEUED = 1000


@dataclass(frozen=True, kw_only=True)
class CacheRow:
    """One stored entry, as written (the signature is checked by the caller)."""

    tenant: str
    key: str
    model: str
    value: str
    signature: str
    size: int
    created_at: float
    expires_at: float
    last_used_at: float
    hits: int = 0


@dataclass(kw_only=True)
class CacheCounts:
    """What the cache did for one tenant. Lookups = hits + misses; an expired or tampered
    entry found by a lookup is a miss, counted under `expirations` or
    `integrity_failures` too."""

    hits: int = 0
    misses: int = 0
    sets: int = 0
    evictions: int = 0
    expirations: int = 0
    integrity_failures: int = 0

    def add(self, other: CacheCounts) -> None:
        for name in _COUNT_FIELDS:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    @property
    def lookups(self) -> int:
        return self.hits + self.misses

    def to_json(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in _COUNT_FIELDS}


_COUNT_FIELDS = tuple(f.name for f in fields(CacheCounts))


@dataclass(frozen=True, kw_only=True)
class TenantCacheStats:
    """Counters and current size of one tenant's cache, as stored in the database."""

    tenant: str
    counts: CacheCounts
    entries: int = 0
    bytes: int = 0
    expired_entries: int = 0
    """Entries past their TTL not yet removed (removed when looked up, evicted or cleared)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            **self.counts.to_json(),
            "entries": self.entries,
            "bytes": self.bytes,
            "expired_entries": self.expired_entries,
        }


@dataclass
class _Batch:
    puts: dict[_Key, CacheRow] = field(default_factory=dict)
    touches: dict[_Key, tuple[int, float]] = field(default_factory=dict)
    """Hits per entry since the last write, and when the last one happened."""
    discards: list[tuple[str, str, str, float]] = field(default_factory=list)
    """(tenant, key, signature, expires_at): delete the row only if it is still that one."""
    counts: dict[str, CacheCounts] = field(default_factory=dict)

    def empty(self) -> bool:
        return not (self.puts or self.touches or self.discards or self.counts)

    def merge_back(self, failed: _Batch) -> None:
        """Queue again what a failed write held (entries queued since then win). Counters
        and hits are always kept; entries and deletions only up to a bound, so a database
        that stays down cannot fill the memory."""
        for key, row in failed.puts.items():
            if len(self.puts) >= _MAX_REQUEUED:
                break
            self.puts.setdefault(key, row)
        self.discards.extend(failed.discards[: max(0, _MAX_REQUEUED - len(self.discards))])
        for key, (n, at) in failed.touches.items():
            old_n, old_at = self.touches.get(key, (0, 0.0))
            self.touches[key] = (old_n + n, max(old_at, at))
        for tenant, counts in failed.counts.items():
            self.counts.setdefault(tenant, CacheCounts()).add(counts)


class CacheBackend:
    """The database side of the response cache, safe to share by tasks and threads."""

    def __init__(
        self,
        url: str,
        *,
        max_bytes: int,
        flush_interval: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._url = url
        self.max_bytes = max_bytes
        """The size bound of the whole cache (every tenant), in bytes."""
        self._flush_interval = flush_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._queued = _Batch()
        self._waiters: list[_Waiter] = []
        self._flushing = False
        self._closing = False
        self._writer: threading.Thread | None = None
        self._readers: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._connections: list[_Connection] = []
        self.on_removed: Callable[[list[_Key]], None] | None = None
        """Called (from the writer thread) with entries the writer deleted (eviction)."""

    # reads

    async def get(self, tenant: str, key: str) -> CacheRow | None:
        """The stored row, unverified; raises the driver's error if the database fails."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._reader_pool(), self._read, tenant, key)

    def _reader_pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._closing:
                raise RuntimeError("the response cache is closed")
            if self._readers is None:
                self._readers = ThreadPoolExecutor(2, thread_name_prefix="agentmill-cache-read")
            return self._readers

    def _read(self, tenant: str, key: str) -> CacheRow | None:
        try:
            return self._read_once(tenant, key)
        except Exception as exc:
            if not connection_lost(exc):
                raise
            # The database ended this thread's connection (a restart, an idle reaper): one
            # more try on a new one; a database still down makes the lookup a miss.
            return self._read_once(tenant, key)

    def _read_once(self, tenant: str, key: str) -> CacheRow | None:
        connection: _Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = self._open()
        try:
            return connection.read(tenant, key)
        except Exception:
            self._local.connection = None
            connection.close()
            raise

    def _open(self) -> _Connection:
        connection = _Connection(self._url)
        with self._lock:
            self._connections.append(connection)
        return connection

    # queued writes

    def put(self, row: CacheRow) -> None:
        with self._lock:
            self._queued.puts[(row.tenant, row.key)] = row
            self._counts(row.tenant).sets += 1
        self._start()
        self._wake.set()

    def touch(self, tenant: str, key: str, at: float) -> None:
        """Record a hit on an entry (for eviction: the least used go first)."""
        with self._lock:
            n, _ = self._queued.touches.get((tenant, key), (0, 0.0))
            self._queued.touches[(tenant, key)] = (n + 1, at)
        self._start()

    def discard(self, row: CacheRow) -> None:
        """Delete an entry found expired or tampered with, unless it was replaced since."""
        with self._lock:
            self._queued.discards.append((row.tenant, row.key, row.signature, row.expires_at))
        self._start()

    def count(self, tenant: str, **deltas: int) -> None:
        """Add to a tenant's counters (`hits=1`, `misses=1`, `expirations=1`, ...)."""
        with self._lock:
            counts = self._counts(tenant)
            for name, n in deltas.items():
                setattr(counts, name, getattr(counts, name) + n)
        self._start()

    def pending(self) -> dict[str, CacheCounts]:
        """Counters recorded here and not written yet."""
        with self._lock:
            result: dict[str, CacheCounts] = {}
            for tenant, counts in self._queued.counts.items():
                result[tenant] = CacheCounts()
                result[tenant].add(counts)
            return result

    def _counts(self, tenant: str) -> CacheCounts:
        return self._queued.counts.setdefault(tenant, CacheCounts())

    async def commit(self) -> None:
        """Wait until everything queued before this call is written (or failed to be)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if self._writer is None or (self._queued.empty() and not self._flushing):
                return
            self._waiters.append((loop, future))
        self._wake.set()
        await asyncio.shield(future)

    async def aclose(self) -> None:
        """Write what is queued, stop the threads and close the connections."""
        atexit.unregister(self._write_at_exit)
        with self._lock:
            self._closing = True
            writer, readers = self._writer, self._readers
        self._wake.set()
        if writer is not None:
            await asyncio.to_thread(writer.join)
        if readers is not None:
            await asyncio.to_thread(readers.shutdown)
        with self._lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            connection.close()

    # the writer thread

    def _start(self) -> None:
        if self._writer is not None:
            return
        with self._lock:
            if self._writer is None and not self._closing:
                self._writer = threading.Thread(
                    target=self._run, name="agentmill-cache-write", daemon=True
                )
                self._writer.start()
                # A process that exits without `aclose` still writes its last counters.
                atexit.register(self._write_at_exit)

    def _write_at_exit(self) -> None:
        with self._lock:
            self._closing = True
            writer = self._writer
        self._wake.set()
        if writer is not None:
            writer.join(timeout=_EXIT_WRITE_TIMEOUT)

    def _run(self) -> None:
        connection: _Connection | None = None
        try:
            while True:
                self._wake.wait(self._flush_interval)
                self._wake.clear()
                connection, written = self._flush(connection)
                with self._lock:
                    idle = self._queued.empty() and not self._waiters
                    if self._closing and not written:
                        logger.error("response cache: counters and entries not written at close")
                        return
                if self._closing and idle:
                    return
        finally:
            if connection is not None:
                connection.close()

    def _flush(self, connection: _Connection | None) -> tuple[_Connection | None, bool]:
        with self._lock:
            batch, self._queued = self._queued, _Batch()
            waiters, self._waiters = self._waiters, []
            self._flushing = not batch.empty()
        error: BaseException | None = None
        try:
            if not batch.empty():
                connection, error = self._write_with_retries(connection, batch)
        finally:
            with self._lock:
                self._flushing = False
                if error is not None:
                    self._queued.merge_back(batch)
        for loop, future in waiters:
            with contextlib.suppress(RuntimeError):  # a waiter's loop already closed
                loop.call_soon_threadsafe(_resolve, future, error)
        return connection, error is None

    def _write_with_retries(
        self, connection: _Connection | None, batch: _Batch
    ) -> tuple[_Connection | None, BaseException | None]:
        for attempt in range(1, _WRITE_TRIES + 1):
            try:
                if connection is None:
                    connection = _Connection(self._url)
                removed = connection.write(batch, max_bytes=self.max_bytes, now=self._clock())
            except Exception as exc:  # noqa: BLE001 - driver errors vary; retried, then reported
                logger.warning("response cache write attempt %d failed: %s", attempt, exc)
                if connection is not None:
                    connection.close()
                    connection = None
                if attempt == _WRITE_TRIES or self._closing:
                    return None, exc
                time.sleep(0.05 * attempt)
            else:
                if removed and self.on_removed is not None:
                    self.on_removed(removed)
                return connection, None
        return connection, None  # pragma: no cover - the loop always returns


def _resolve(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


class _Connection:
    """One DB-API connection of the cache (SQLite in autocommit mode, or psycopg)."""

    def __init__(self, url: str) -> None:
        scheme, rest = url.split("://", 1)
        self.dialect = "sqlite" if scheme.startswith("sqlite") else "postgresql"
        self._raw: Any
        if self.dialect == "sqlite":
            import sqlite3

            self._raw = sqlite3.connect(
                rest[1:], timeout=10.0, isolation_level=None, check_same_thread=False
            )
            self._raw.execute("PRAGMA synchronous=NORMAL")
        else:
            import psycopg

            self._raw = psycopg.connect(f"postgresql://{rest}", autocommit=True, connect_timeout=10)
        self._sql = _statements(self.dialect)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._raw.close()

    def read(self, tenant: str, key: str) -> CacheRow | None:
        cursor = self._raw.execute(self._sql["read"], {"tenant": tenant, "key": key})
        found = cursor.fetchone()
        if found is None:
            return None
        return CacheRow(**dict(zip(_ROW_COLUMNS, found, strict=True)))

    def write(self, batch: _Batch, *, max_bytes: int, now: float) -> list[_Key]:
        """One transaction: new entries, hits, discards, eviction, counters. Returns the
        entries eviction deleted. Rows are taken in key order (no deadlock between writers)."""
        sql = self._sql
        removed: list[_Key] = []
        with self._transaction() as cursor:
            for _, row in sorted(batch.puts.items()):
                cursor.execute(sql["put"], row.__dict__)
            for (tenant, key), (n, at) in sorted(batch.touches.items()):
                cursor.execute(sql["touch"], {"tenant": tenant, "key": key, "n": n, "at": at})
            for tenant, key, signature, expires_at in sorted(batch.discards):
                values = {"tenant": tenant, "key": key, "sig": signature, "exp": expires_at}
                cursor.execute(sql["discard"], values)
            counts = {tenant: _copy(c) for tenant, c in batch.counts.items()}
            if batch.puts:
                removed = _evict(cursor, sql, counts, keep=batch.puts, max_bytes=max_bytes, now=now)
            for tenant, delta in sorted(counts.items()):
                cursor.execute(sql["count"], {"tenant": tenant, **delta.to_json()})
        return removed

    @contextlib.contextmanager
    def _transaction(self) -> Any:
        if self.dialect == "sqlite":
            cursor = self._raw.cursor()
            cursor.execute("BEGIN IMMEDIATE")
            try:
                yield cursor
            except BaseException:
                self._raw.rollback()
                raise
            self._raw.commit()
            return
        with self._raw.transaction(), self._raw.cursor() as cursor:
            yield cursor


def _copy(counts: CacheCounts) -> CacheCounts:
    result = CacheCounts()
    result.add(counts)
    return result


def _evict(
    cursor: Any,
    sql: dict[str, str],
    counts: dict[str, CacheCounts],
    *,
    keep: set[_Key] | dict[_Key, CacheRow],
    max_bytes: int,
    now: float,
) -> list[_Key]:
    """Bring the cache under `max_bytes`: expired entries first, then the least useful
    (fewest hits, then least recently used), never the entries just written (`keep`):
    they have had no chance to be used yet."""
    cursor.execute(sql["total"])
    total = int(cursor.fetchone()[0])
    if total <= max_bytes:
        return []
    removed: list[_Key] = []
    cursor.execute(sql["purge"], {"now": now})
    for tenant, key, size in cursor.fetchall():
        counts.setdefault(tenant, CacheCounts()).expirations += 1
        removed.append((tenant, key))
        total -= size
    skipped = 0
    while total > max_bytes:
        cursor.execute(sql["least_useful"], {"limit": _EVICT_PAGE, "offset": skipped})
        page = cursor.fetchall()
        if not page:
            break
        for tenant, key, size in page:
            if (tenant, key) in keep:
                skipped += 1
                continue
            cursor.execute(sql["evict"], {"tenant": tenant, "key": key})
            if cursor.rowcount == 1:
                counts.setdefault(tenant, CacheCounts()).evictions += 1
                removed.append((tenant, key))
                total -= size
            if total <= max_bytes:
                break
    return removed


_ROW_COLUMNS = tuple(f.name for f in fields(CacheRow))
_COUNT_COLUMNS = ", ".join(_COUNT_FIELDS)
_COUNT_VALUES = ", ".join(f":{name}" for name in _COUNT_FIELDS)
_COUNT_UPDATES = ", ".join(f"{n} = am_cache_stats.{n} + excluded.{n}" for n in _COUNT_FIELDS)
_PUT_UPDATES = ", ".join(
    f"{c} = excluded.{c}"
    for c in ("model", "value", "signature", "size", "created_at", "expires_at", "last_used_at")
)
_SQL = {
    "read": f"SELECT {', '.join(_ROW_COLUMNS)} FROM am_cache"  # noqa: S608 - constant names
    " WHERE tenant = :tenant AND key = :key",
    "touch": "UPDATE am_cache SET hits = hits + :n, last_used_at = :at"
    " WHERE tenant = :tenant AND key = :key",
    # A replaced entry keeps its hit count: the key stays as useful as it was.
    "put": f"INSERT INTO am_cache ({', '.join(_ROW_COLUMNS)})"  # noqa: S608 - constant names
    f" VALUES ({', '.join(':' + c for c in _ROW_COLUMNS)})"
    f" ON CONFLICT (tenant, key) DO UPDATE SET {_PUT_UPDATES}",
    "discard": "DELETE FROM am_cache WHERE tenant = :tenant AND key = :key"
    " AND signature = :sig AND expires_at = :exp",
    "count": f"INSERT INTO am_cache_stats (tenant, {_COUNT_COLUMNS})"  # noqa: S608 - constants
    f" VALUES (:tenant, {_COUNT_VALUES}) ON CONFLICT (tenant) DO UPDATE SET {_COUNT_UPDATES}",
    "total": "SELECT COALESCE(SUM(size), 0) FROM am_cache",
    "purge": "DELETE FROM am_cache WHERE expires_at <= :now RETURNING tenant, key, size",
    "least_useful": "SELECT tenant, key, size FROM am_cache"
    " ORDER BY hits, last_used_at, tenant, key LIMIT :limit OFFSET :offset",
    "evict": "DELETE FROM am_cache WHERE tenant = :tenant AND key = :key",
}


def _statements(dialect: str) -> dict[str, str]:
    """The statements in the driver's parameter style (`:name` or `%(name)s`)."""
    if dialect == "sqlite":
        return _SQL
    return {name: re.sub(r":(\w+)", r"%(\1)s", text) for name, text in _SQL.items()}


# Stats and clearing, for the CLI and /metrics (on the store's async engine)


@reconnecting
async def read_stats(
    engine: AsyncEngine, *, tenant: str | None = None, now: float | None = None
) -> list[TenantCacheStats]:
    """Counters and sizes per tenant (one tenant with `tenant`), ordered by tenant."""
    now = time.time() if now is None else now
    counters = sa.select(cache_stats)
    sizes = sa.select(
        cache_entries.c.tenant,
        sa.func.count(),
        sa.func.coalesce(sa.func.sum(cache_entries.c.size), 0),
        sa.func.coalesce(sa.func.sum(sa.case((cache_entries.c.expires_at <= now, 1), else_=0)), 0),
    ).group_by(cache_entries.c.tenant)
    if tenant is not None:
        counters = counters.where(cache_stats.c.tenant == tenant)
        sizes = sizes.where(cache_entries.c.tenant == tenant)
    async with engine.connect() as conn:
        count_rows = (await conn.execute(counters)).all()
        size_rows = (await conn.execute(sizes)).all()
    by_tenant: dict[str, dict[str, Any]] = {}
    for row in count_rows:
        values = row._mapping
        counts = CacheCounts(**{name: int(values[name]) for name in _COUNT_FIELDS})
        by_tenant[values["tenant"]] = {"counts": counts}
    for name, entries, size, expired in size_rows:
        found = by_tenant.setdefault(name, {"counts": CacheCounts()})
        found.update(entries=int(entries), bytes=int(size), expired_entries=int(expired))
    return [TenantCacheStats(tenant=name, **by_tenant[name]) for name in sorted(by_tenant)]


@reconnecting
async def clear_entries(
    engine: AsyncEngine,
    *,
    tenant: str | None = None,
    expired_only: bool = False,
    now: float | None = None,
) -> tuple[int, int]:
    """Delete entries (of one tenant, or only expired ones); returns (entries, bytes)."""
    now = time.time() if now is None else now
    condition = sa.true()
    if tenant is not None:
        condition = sa.and_(condition, cache_entries.c.tenant == tenant)
    if expired_only:
        condition = sa.and_(condition, cache_entries.c.expires_at <= now)
    delete = cache_entries.delete().where(condition).returning(cache_entries.c.size)
    async with engine.begin() as conn:
        sizes = list((await conn.execute(delete)).scalars())
    return len(sizes), sum(sizes)
