"""Shared rate limits: GCRA slots per limit key, and concurrency leases with an expiry.

One row per limit key in `am_rate_limits` holds two *theoretical arrival times* (TAT,
epoch seconds): `request_tat` for requests per minute and `token_tat` for tokens per
minute. A call is given a start time no earlier than every TAT it is subject to and
pushes each TAT to `start + interval` (requests) or `start + tokens * token_interval`
(tokens): calls start spaced by the interval, and the database row is the one counter
every worker shares. The read and the write happen while holding the rows (PostgreSQL:
one `UPDATE` whose CTE locks them `FOR UPDATE` in key order; SQLite: a transaction whose
first write takes the database's one write lock), so two workers never get the same slot.
Rows are created in their own transaction before any of that: created inside a locking
transaction, two workers could each hold the row the other waits for.

`am_rate_leases` holds one row per call in flight under a concurrency cap. A lease is
taken only while fewer unexpired leases of its key exist, checked and inserted while
holding the key's row; it expires unless renewed, so a crashed worker's calls free their
places by themselves.

Times are epoch seconds from the caller's clock (`time.time()` unless one is given), as
in every agentmill table: workers on several machines need synchronised clocks (NTP).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from agentmill.store.reconnect import RECONNECT_FOR, reconnecting, retrying
from agentmill.store.tables import rate_leases, rate_limits

__all__ = ["RateLimitStore", "RateRule", "Slot"]


@dataclass(frozen=True, kw_only=True)
class RateRule:
    """The limits of one key as intervals: 0 means that dimension is not limited."""

    key: str
    request_interval: float = 0.0
    """Seconds between two request starts (60 / rpm)."""
    token_interval: float = 0.0
    """Seconds per token (60 / tpm)."""
    concurrency: int | None = None
    """Calls in flight at once, over every worker."""


@dataclass(frozen=True, kw_only=True)
class Slot:
    """The outcome of asking for a start time."""

    start: float
    """When the call may start (epoch seconds)."""
    now: float
    """The clock when the rows were read."""
    reserved: bool
    """False: `start` was further away than the look-ahead; nothing was taken."""


class RateLimitStore:
    """Slots and leases in the database, shared by every worker using it."""

    def __init__(self, engine: AsyncEngine, *, clock: Callable[[], float] = time.time) -> None:
        self._engine = engine
        self._clock = clock
        self._postgres = engine.dialect.name == "postgresql"
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._known: set[str] = set()
        """Keys whose rows this process has made sure exist."""
        self._statements: dict[tuple[RateRule, ...], sa.Update] = {}
        """The one-statement reservation per set of rules (PostgreSQL)."""

    @reconnecting
    async def reserve(self, rules: Sequence[RateRule], *, tokens: int, lookahead: float) -> Slot:
        """Take the next start time common to every rule, if it is within `lookahead`
        seconds; otherwise take nothing and say when it would be."""
        keys = sorted({rule.key for rule in rules})
        await self._ensure_rows(keys)
        if self._postgres:
            now = self._clock()
            start = await self._reserve_at_once(rules, tokens=tokens, now=now, lookahead=lookahead)
            if start is not None:
                return Slot(start=start, now=now, reserved=True)
        async with self._engine.begin() as conn:
            tats = await self._lock_rows(conn, keys)
            now = self._clock()
            start = max([now, *_pending(rules, tats)])
            if start - now > lookahead:
                return Slot(start=start, now=now, reserved=False)
            values = [_advanced(rule, tats[rule.key], start, tokens) for rule in rules]
            await conn.execute(_SET_TATS, values)
        return Slot(start=start, now=now, reserved=True)

    async def _reserve_at_once(
        self, rules: Sequence[RateRule], *, tokens: int, now: float, lookahead: float
    ) -> float | None:
        """PostgreSQL: the same as one statement (one round trip, no transaction to open
        and commit); None when its rows are missing or the slot is beyond the look-ahead.

        A CTE locks the rows (`FOR UPDATE` waits for a concurrent writer and then reads
        the row it wrote) and computes the common start from them; the UPDATE then writes
        every row from that start (a row changed since the statement's snapshot is
        re-read, now locked by us, before it is written)."""
        keys = sorted({rule.key for rule in rules})
        query = self._statements.get(tuple(rules))
        if query is None:
            query = self._statements[tuple(rules)] = _reserve_statement(rules, keys)
        params = {"b_now": now, "b_limit": now + lookahead, "b_tokens": tokens}
        async with self._autocommit.connect() as conn:
            rows = (await conn.execute(query, params)).all()
        if rows and len(rows) < len(keys):  # a row deleted by hand: one slot lost, no more
            self._known.difference_update(keys)
        return float(rows[0][0]) if len(rows) == len(keys) else None

    async def adjust_tokens(self, rules: Sequence[RateRule], *, tokens: int) -> None:
        """Charge `tokens` more (negative: give back) to the token-limited rules."""
        await self.settle(rules=rules, tokens=tokens)

    @reconnecting
    async def acquire_leases(
        self, caps: Sequence[tuple[str, int]], ids: Sequence[str], *, ttl: float
    ) -> bool:
        """Insert one lease per (key, cap) if every key has fewer unexpired leases than its
        cap; all or none. `ids` are the new leases' ids, one per cap."""
        keys = sorted(key for key, _ in caps)
        if self._postgres:
            await self._ensure_rows(keys)
        async with self._engine.connect() as conn:
            if self._postgres:
                await self._lock_rows(conn, keys)
            now = self._clock()
            # On SQLite the first insert takes the database's write lock until the end.
            for lease, (key, cap) in zip(ids, caps, strict=True):
                taken = await conn.execute(_lease_if_free(lease, key, cap, now, now + ttl))
                if taken.first() is None:
                    await conn.rollback()
                    await self._clear_expired(conn, keys, now)
                    return False
            await conn.commit()
        return True

    async def _clear_expired(self, conn: AsyncConnection, keys: Sequence[str], now: float) -> None:
        """Delete the leases of crashed workers (they no longer count; this keeps the table
        small)."""
        query = rate_leases.delete().where(
            rate_leases.c.key.in_(keys), rate_leases.c.expires_at <= now
        )
        await conn.execute(query)
        await conn.commit()

    @reconnecting
    async def renew_leases(self, ids: Sequence[str], *, ttl: float) -> int:
        """Push the expiry of these leases `ttl` seconds from now; how many still existed."""
        query = (
            rate_leases.update()
            .where(rate_leases.c.id.in_(list(ids)))
            .values(expires_at=self._clock() + ttl)
        )
        async with self._engine.begin() as conn:
            return (await conn.execute(query)).rowcount

    async def release_leases(self, ids: Sequence[str]) -> None:
        await self.settle(leases=ids)

    async def settle(
        self, *, leases: Sequence[str] = (), rules: Sequence[RateRule] = (), tokens: int = 0
    ) -> None:
        """After a call: delete its leases and charge `tokens` more (negative: give back)
        to its token-limited rules, in one transaction.

        A charge adds to the TAT, so it is recorded under a settlement id in the same
        transaction: a try run again after its commit was applied but its answer lost
        (`store/reconnect.py`) finds the record and charges nothing."""
        charges = [
            {"b_key": rule.key, "b_delta": tokens * rule.token_interval}
            for rule in sorted(rules, key=lambda rule: rule.key)  # lock order, as everywhere
            if rule.token_interval and tokens
        ]
        if not leases and not charges:
            return
        settlement = uuid.uuid4().hex  # one for every try
        await retrying(lambda: self._settle(settlement, list(leases), charges))

    async def _settle(
        self, settlement: str, leases: list[str], charges: list[dict[str, str | float]]
    ) -> None:
        async with self._engine.begin() as conn:
            if charges and not await self._record_settlement(conn, settlement):
                return  # settled by an earlier try: its leases are gone too
            if leases:
                await conn.execute(rate_leases.delete().where(rate_leases.c.id.in_(leases)))
            if charges:
                await conn.execute(_ADD_TOKEN_TAT, charges)

    async def _record_settlement(self, conn: AsyncConnection, settlement: str) -> bool:
        """Record a settlement (a row of `am_rate_leases` under a key no limit has, kept
        while its tries may run); False if it was already. Expired records are deleted."""
        now = self._clock()
        expired = rate_leases.delete().where(
            rate_leases.c.key == _SETTLED, rate_leases.c.expires_at <= now
        )
        await conn.execute(expired)
        insert = postgresql.insert if self._postgres else sqlite.insert
        query = insert(rate_leases).values(
            id=settlement, key=_SETTLED, expires_at=now + _SETTLED_FOR
        )
        recorded = await conn.execute(query.on_conflict_do_nothing().returning(rate_leases.c.id))
        return recorded.first() is not None

    @reconnecting
    async def leases_held(self, key: str) -> int:
        """Unexpired leases of a key (for stats and tests)."""
        async with self._engine.connect() as conn:
            return (await _held(conn, [key], self._clock())).get(key, 0)

    async def _ensure_rows(self, keys: Sequence[str]) -> None:
        """Create the keys' rows once, each in its own statement and transaction: created
        inside a locking transaction, two workers could each hold the row the other waits
        for."""
        missing = [key for key in keys if key not in self._known]
        if not missing:
            return
        insert = postgresql.insert if self._postgres else sqlite.insert
        query = insert(rate_limits).values([{"key": key} for key in missing])
        async with self._engine.begin() as conn:
            await conn.execute(query.on_conflict_do_nothing())
        self._known.update(missing)

    async def _lock_rows(
        self, conn: AsyncConnection, keys: Sequence[str]
    ) -> dict[str, tuple[float, float]]:
        """Hold the keys' rows until the transaction ends, and read their TATs."""
        if not self._postgres:
            # SQLite has one writer at a time: writing first makes the reads below current
            # and keeps them so until the commit.
            touch = rate_limits.update().where(rate_limits.c.key.in_(keys))
            await conn.execute(touch.values(request_tat=rate_limits.c.request_tat))
        found = await self._read_rows(conn, keys)
        if len(found) < len(keys):  # deleted by hand meanwhile: created again next time
            self._known.difference_update(keys)
        return {key: found.get(key, (0.0, 0.0)) for key in keys}

    async def _read_rows(
        self, conn: AsyncConnection, keys: Sequence[str]
    ) -> dict[str, tuple[float, float]]:
        query = (
            sa.select(rate_limits.c.key, rate_limits.c.request_tat, rate_limits.c.token_tat)
            .where(rate_limits.c.key.in_(keys))
            .order_by(rate_limits.c.key)
        )
        if self._postgres:
            query = query.with_for_update()  # in key order: no deadlock between workers
        rows = (await conn.execute(query)).all()
        return {row.key: (float(row.request_tat), float(row.token_tat)) for row in rows}


def _pending(rules: Sequence[RateRule], tats: dict[str, tuple[float, float]]) -> list[float]:
    """The TATs that hold this call back: only of the dimensions its rules limit."""
    times: list[float] = []
    for rule in rules:
        request_tat, token_tat = tats[rule.key]
        if rule.request_interval:
            times.append(request_tat)
        if rule.token_interval:
            times.append(token_tat)
    return times


def _pending_columns(rules: Sequence[RateRule], locked: sa.CTE) -> list[sa.ColumnElement[float]]:
    """`_pending` in SQL over the locked rows (NULL for the rows of other keys)."""
    columns: list[sa.ColumnElement[float]] = []
    for rule in rules:
        if rule.request_interval:
            columns.append(sa.case((locked.c.key == rule.key, locked.c.request_tat)))
        if rule.token_interval:
            columns.append(sa.case((locked.c.key == rule.key, locked.c.token_tat)))
    return columns


def _reserve_statement(rules: Sequence[RateRule], keys: list[str]) -> sa.Update:
    """The one-statement reservation for these rules (parameters `b_now`, `b_limit` =
    now + look-ahead, `b_tokens`); built once per set of rules."""
    locked = (
        sa.select(rate_limits.c.key, rate_limits.c.request_tat, rate_limits.c.token_tat)
        .where(rate_limits.c.key.in_(keys))
        .order_by(rate_limits.c.key)
        .with_for_update()
        .cte("locked")
    )
    held_back = [sa.func.max(expr) for expr in _pending_columns(rules, locked)]
    now = sa.bindparam("b_now", type_=sa.Float)
    at = sa.select(sa.func.greatest(now, *held_back).label("at")).select_from(locked)
    start = sa.select(at.cte("start").c.at).scalar_subquery()
    tokens = sa.bindparam("b_tokens", type_=sa.Float)
    request = [
        (rate_limits.c.key == rule.key, start + rule.request_interval)
        for rule in rules
        if rule.request_interval
    ]
    token = [
        (rate_limits.c.key == rule.key, start + tokens * rule.token_interval)
        for rule in rules
        if rule.token_interval
    ]
    values: dict[str, sa.ColumnElement[float]] = {}
    if request:
        values["request_tat"] = sa.case(*request, else_=rate_limits.c.request_tat)
    if token:
        values["token_tat"] = sa.case(*token, else_=rate_limits.c.token_tat)
    return (
        rate_limits.update()
        .where(rate_limits.c.key.in_(keys), start <= sa.bindparam("b_limit", type_=sa.Float))
        .values(values)
        .returning(start)
    )


def _advanced(
    rule: RateRule, tats: tuple[float, float], start: float, tokens: int
) -> dict[str, object]:
    request_tat, token_tat = tats
    if rule.request_interval:
        request_tat = start + rule.request_interval
    if rule.token_interval:
        token_tat = start + tokens * rule.token_interval
    return {"b_key": rule.key, "b_request": request_tat, "b_token": token_tat}


async def _held(conn: AsyncConnection, keys: Sequence[str], now: float) -> dict[str, int]:
    query = (
        sa.select(rate_leases.c.key, sa.func.count())
        .where(rate_leases.c.key.in_(keys), rate_leases.c.expires_at > now)
        .group_by(rate_leases.c.key)
    )
    return {row[0]: int(row[1]) for row in await conn.execute(query)}


def _lease_if_free(lease: str, key: str, cap: int, now: float, expires_at: float) -> sa.Insert:
    """Insert the lease only while fewer than `cap` unexpired leases of `key` exist."""
    held = (
        sa.select(sa.func.count())
        .select_from(rate_leases)
        .where(rate_leases.c.key == key, rate_leases.c.expires_at > now)
        .scalar_subquery()
    )
    row = sa.select(
        sa.literal(lease, sa.String), sa.literal(key, sa.String), sa.literal(expires_at, sa.Float)
    ).where(held < cap)
    insert = rate_leases.insert().from_select(["id", "key", "expires_at"], row)
    return insert.returning(rate_leases.c.id)  # rowcount is not reliable here on psycopg


_SETTLED = ""
"""The key of settlement records in `am_rate_leases`: no limit's key is empty."""
_SETTLED_FOR = 10 * RECONNECT_FOR
"""Seconds a settlement record is kept: longer than its tries are run again."""

_SET_TATS = (
    rate_limits.update()
    .where(rate_limits.c.key == sa.bindparam("b_key"))
    .values(request_tat=sa.bindparam("b_request"), token_tat=sa.bindparam("b_token"))
)
_ADD_TOKEN_TAT = (
    rate_limits.update()
    .where(rate_limits.c.key == sa.bindparam("b_key"))
    .values(token_tat=rate_limits.c.token_tat + sa.bindparam("b_delta"))
)
