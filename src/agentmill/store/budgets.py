"""Budget ledger and holds: worst-case reservations taken atomically across levels.

A ledger row per scope (`run:<id>`, `run:<id>/agent:<name>`, `tenant:<t>/day:2026-11-23`,
`key:<id>/month:2026-11`) counts what was spent and what calls in flight have reserved.
A reservation is one transaction of conditional UPDATEs, one per scope, in sorted scope
order (so two reservations never wait on each other in a cycle):

    UPDATE am_budget_ledger SET reserved = reserved + :x
    WHERE scope = :s AND spent + reserved + :x <= :limit

If any row does not take the amount the transaction rolls back and nothing is reserved.
A hold row records what was reserved where; settling or releasing it is conditional on
its status still being `held`, so nothing is settled twice.

Each transaction runs whole on a worker thread with a blocking connection: one thread
hop per reservation instead of one per statement (measured: the async driver's hops cost
more than the statements themselves; see docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.exc import OperationalError

from agentmill.errors import BudgetExceeded
from agentmill.store.reconnect import retrying_sync
from agentmill.store.tables import budget_holds, budget_ledger

__all__ = ["BudgetStore", "Hold", "HoldStatus", "LedgerEntry", "Limit"]

_USD_SLACK = 1e-9
"""Tolerance for float rounding: five reservations of $0.2 fit a $1.00 budget."""
_T = TypeVar("_T")
_TAKE_TRIES = 5
_CLOSE_TRIES = 3
"""Attempts of one scope's conditional update while its row changes under it."""


class HoldStatus(StrEnum):
    HELD = "held"
    SETTLED = "settled"
    """The call answered: its actual cost moved to `spent`, the rest was released."""
    RELEASED = "released"
    """The call failed, was cut off, or its run ended first: nothing was charged."""


@dataclass(frozen=True, kw_only=True)
class Limit:
    """One budget level as it applies to a call: its ledger scope and its limits."""

    scope: str
    name: str
    """How the error names it, e.g. "tenant 'acme' daily budget"."""
    usd: float | None = None
    tokens: int | None = None


@dataclass(frozen=True, kw_only=True)
class Hold:
    """A worst-case reservation for one call attempt on one model, over several scopes."""

    id: str
    run_id: str
    call_key: str
    tenant: str
    scopes: tuple[str, ...]
    usd: float
    tokens: int
    status: HoldStatus = HoldStatus.HELD


@dataclass(frozen=True, kw_only=True)
class LedgerEntry:
    scope: str
    tenant: str
    spent_usd: float
    spent_tokens: int
    reserved_usd: float
    reserved_tokens: int
    updated_at: float


class BudgetStore:
    """Reserving, settling and releasing budget holds."""

    def __init__(self, engine: sa.Engine) -> None:
        """`engine`: a blocking engine (`Store.sync_engine`: on PostgreSQL its commits do
        not wait for the WAL flush, so a PostgreSQL crash may lose the last fraction of a
        second of spend, as for checkpoints); calls run on worker threads."""
        self._engine = engine
        self._sql = _STATEMENTS[engine.dialect.name == "postgresql"]
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")

    async def _in_thread(self, work: Callable[[], _T]) -> _T:
        """Run one unit (a transaction, or statements conditional on the hold's status)
        on a worker thread, again if its connection was lost (`store/reconnect.py`)."""
        return await asyncio.to_thread(retrying_sync, work)

    async def reserve(self, hold: Hold, limits: Sequence[Limit]) -> bool:
        """Reserve `hold` on every limit's scope at once, or raise BudgetExceeded naming
        the first level it does not fit. False (nothing reserved) if a hold with this id
        already exists: a crashed earlier attempt, to release first."""
        now = time.time()
        row = {
            "id": hold.id,
            "run_id": hold.run_id,
            "call_key": hold.call_key,
            "tenant": hold.tenant,
            "scopes": json.dumps(sorted(hold.scopes)),
            "usd": hold.usd,
            "tokens": hold.tokens,
            "status": str(HoldStatus.HELD),
            "created_at": now,
        }

        def reserve() -> bool:
            if self._sql.reserve_one and len(limits) == 1 and self._reserve_one(limits[0], row):
                return True
            with self._engine.begin() as conn:
                # The hold's row first: an attempt recorded before a crash (same id) must not
                # count against the budget before it is found and released.
                if conn.exec_driver_sql(self._sql.insert_hold, row).first() is None:
                    return False
                for limit in sorted(limits, key=lambda limit: limit.scope):
                    self._take(conn, limit, hold, now)  # BudgetExceeded rolls it all back
            return True

        return await self._in_thread(reserve)

    async def settle(self, hold: Hold, *, usd: float, tokens: int) -> bool:
        """Charge what the call actually cost and release the rest of its hold; True if
        this settled it (False: already settled or released)."""
        return await self._close(hold, HoldStatus.SETTLED, usd=usd, tokens=tokens)

    async def release(self, hold: Hold) -> bool:
        """Release the whole hold, charging nothing."""
        return await self._close(hold, HoldStatus.RELEASED, usd=0.0, tokens=0)

    async def release_call(self, run_id: str, call_key: str) -> set[str]:
        """Release the unsettled holds of earlier attempts of one call (left by a crash);
        returns the ids of all its holds, whatever their status."""
        query = sa.select(budget_holds).where(
            budget_holds.c.run_id == run_id, budget_holds.c.call_key == call_key
        )
        return {hold.id for hold in await self._in_thread(lambda: self._release_found(query))}

    async def held(self, run_id: str, *, created_before: float | None = None) -> list[Hold]:
        """A run's unsettled holds (made before `created_before`, if given)."""
        query = sa.select(budget_holds).where(
            budget_holds.c.run_id == run_id, budget_holds.c.status == str(HoldStatus.HELD)
        )
        if created_before is not None:
            query = query.where(budget_holds.c.created_at <= created_before)
        return await self._in_thread(lambda: self._holds(query))

    async def release_all(self, holds: Sequence[Hold]) -> int:
        """Release these holds (those still held); how many this released."""
        return sum([await self.release(hold) for hold in holds])

    async def holds(self, run_id: str) -> list[Hold]:
        query = sa.select(budget_holds).where(budget_holds.c.run_id == run_id)
        return await self._in_thread(lambda: self._holds(query))

    async def entry(self, scope: str) -> LedgerEntry | None:
        def read() -> LedgerEntry | None:
            with self._engine.connect() as conn:
                return _entry(conn, scope)

        return await self._in_thread(read)

    async def entries(self, *, tenant: str, prefix: str = "") -> list[LedgerEntry]:
        """A tenant's ledger rows whose scope starts with `prefix`, by scope."""
        query = sa.select(budget_ledger).where(budget_ledger.c.tenant == tenant)
        if prefix:
            query = query.where(budget_ledger.c.scope.startswith(prefix, autoescape=True))

        def read() -> list[LedgerEntry]:
            with self._engine.connect() as conn:
                rows = conn.execute(query.order_by(budget_ledger.c.scope))
                return [LedgerEntry(**row._mapping) for row in rows]

        return await self._in_thread(read)

    def _holds(self, query: sa.Select[Any]) -> list[Hold]:
        with self._engine.connect() as conn:
            return [_hold(row._mapping) for row in conn.execute(query)]

    def _take(self, conn: sa.Connection, limit: Limit, hold: Hold, now: float) -> None:
        entry: LedgerEntry | None = None
        query = self._sql.reserve[limit.usd is not None, limit.tokens is not None]
        params = {
            "scope": limit.scope,
            "usd": hold.usd,
            "tokens": hold.tokens,
            "now": now,
            **({"limit_usd": limit.usd + _USD_SLACK} if limit.usd is not None else {}),
            **({"limit_tokens": limit.tokens} if limit.tokens is not None else {}),
        }
        for _ in range(_TAKE_TRIES):
            if conn.exec_driver_sql(query, params).rowcount == 1:
                return
            # Either the amount does not fit, or the row was missing, or it changed between
            # the two statements (each sees what was committed when it started).
            entry = _entry(conn, limit.scope)
            if entry is None:  # the scope's first call: create its row
                row = {"scope": limit.scope, "tenant": hold.tenant, "updated_at": now}
                conn.exec_driver_sql(self._sql.insert_ledger, row)
            elif not _fits(limit, entry, hold):
                break
        assert entry is not None  # the row exists once the insert above has run
        raise _exceeded(limit, entry, hold)

    async def _close(self, hold: Hold, status: HoldStatus, *, usd: float, tokens: int) -> bool:
        for attempt in range(1, _CLOSE_TRIES + 1):
            try:
                return await self._in_thread(
                    lambda: self._close_now(hold, status, usd=usd, tokens=tokens)
                )
            except OperationalError:
                # A deadlock or a dropped connection: closing is conditional on the hold
                # still being held, so trying again can never charge twice.
                if attempt == _CLOSE_TRIES:
                    raise
        raise AssertionError("unreachable")

    def _reserve_one(self, limit: Limit, row: dict[str, Any]) -> bool:
        """PostgreSQL, one level: take the amount and record the hold in one statement (one
        round trip). False when it did not apply (the amount does not fit, the scope's row
        is missing, or the hold exists): the transaction above then finds out which."""
        assert self._sql.reserve_one is not None
        query = self._sql.reserve_one[limit.usd is not None, limit.tokens is not None]
        params = {**row, "scope": limit.scope, "now": row["created_at"]}
        if limit.usd is not None:
            params["limit_usd"] = limit.usd + _USD_SLACK
        if limit.tokens is not None:
            params["limit_tokens"] = limit.tokens
        with self._autocommit.connect() as conn:
            return conn.exec_driver_sql(query, params).first() is not None

    def _close_now(self, hold: Hold, status: HoldStatus, *, usd: float, tokens: int) -> bool:
        now = time.time()
        claim = {"id": hold.id, "status": str(status), "now": now}
        amounts = {"ru": hold.usd, "rt": hold.tokens, "su": usd, "st": tokens}
        if self._sql.close_one is not None and len(hold.scopes) == 1:
            # PostgreSQL, one level: claim the hold and settle its scope in one statement.
            # (Several levels take the transaction below, which locks them in scope order.)
            params = {**claim, **amounts, "scope": hold.scopes[0]}
            with self._autocommit.connect() as conn:
                return conn.exec_driver_sql(self._sql.close_one, params).first() is not None
        with self._engine.begin() as conn:
            if conn.exec_driver_sql(self._sql.claim, claim).rowcount != 1:
                return False
            for scope in sorted(hold.scopes):
                conn.exec_driver_sql(self._sql.settle, {"scope": scope, "now": now, **amounts})
        return True

    def _release_found(self, query: sa.Select[Any]) -> list[Hold]:
        found = self._holds(query)
        for hold in found:
            if hold.status is HoldStatus.HELD:
                self._close_now(hold, HoldStatus.RELEASED, usd=0.0, tokens=0)
        return found


@dataclass(frozen=True)
class _Statements:
    """The hot statements as plain SQL in the driver's parameter style: executed without
    SQLAlchemy's compilation (measured: it cost more than the round trips on SQLite)."""

    reserve: dict[tuple[bool, bool], str]
    """The conditional reservation on one scope, by which limits it checks (usd, tokens)."""
    insert_hold: str
    insert_ledger: str
    claim: str
    settle: str
    reserve_one: dict[tuple[bool, bool], str] | None = None
    """PostgreSQL: one level's reservation and the hold's row in one statement."""
    close_one: str | None = None
    """PostgreSQL: claiming a hold of one level and settling it in one statement."""

    @classmethod
    def of(cls, *, postgresql: bool) -> _Statements:
        def p(name: str) -> str:
            return f"%({name})s" if postgresql else f":{name}"

        reserve = {
            (usd, tokens): _reserve_sql(p, usd=usd, tokens=tokens)
            for usd in (False, True)
            for tokens in (False, True)
        }
        hold_columns = ["id", "run_id", "call_key", "tenant", "scopes", "usd", "tokens"]
        hold_columns += ["status", "created_at"]
        values = ", ".join(
            p(c) + ("::json" if postgresql and c == "scopes" else "") for c in hold_columns
        )
        insert_hold = (
            f"INSERT INTO am_budget_holds ({', '.join(hold_columns)}) VALUES ({values})"  # noqa: S608
            " ON CONFLICT (id) DO NOTHING RETURNING id"
        )
        claim = (
            f"UPDATE am_budget_holds SET status = {p('status')}, settled_at = {p('now')}"  # noqa: S608
            f" WHERE id = {p('id')} AND status = '{HoldStatus.HELD}'"
        )
        settle = (
            f"UPDATE am_budget_ledger SET reserved_usd = reserved_usd - {p('ru')},"  # noqa: S608
            f" reserved_tokens = reserved_tokens - {p('rt')},"
            f" spent_usd = spent_usd + {p('su')}, spent_tokens = spent_tokens + {p('st')},"
            f" updated_at = {p('now')}"
        )
        one_statement: dict[str, Any] = {}
        if postgresql:
            selected = ", ".join(p(c) + ("::json" if c == "scopes" else "") for c in hold_columns)
            one_statement["reserve_one"] = {
                key: (
                    f"WITH taken AS ({sql} AND NOT EXISTS"  # noqa: S608
                    f" (SELECT 1 FROM am_budget_holds WHERE id = {p('id')}) RETURNING scope)"
                    f" INSERT INTO am_budget_holds ({', '.join(hold_columns)})"
                    f" SELECT {selected} FROM taken RETURNING id"
                )
                for key, sql in reserve.items()
            }
            one_statement["close_one"] = (
                f"WITH claimed AS ({claim} RETURNING id),"  # noqa: S608
                f" settled AS ({settle} WHERE scope = {p('scope')}"
                " AND EXISTS (SELECT 1 FROM claimed) RETURNING scope)"
                " SELECT id FROM claimed"
            )
        return cls(
            reserve=reserve,
            claim=claim,
            settle=f"{settle} WHERE scope = {p('scope')}",
            **one_statement,
            insert_hold=insert_hold,
            insert_ledger=(
                "INSERT INTO am_budget_ledger (scope, tenant, spent_usd, spent_tokens,"  # noqa: S608
                " reserved_usd, reserved_tokens, updated_at)"
                f" VALUES ({p('scope')}, {p('tenant')}, 0, 0, 0, 0, {p('updated_at')})"
                " ON CONFLICT (scope) DO NOTHING"
            ),
        )


def _reserve_sql(p: Callable[[str], str], *, usd: bool, tokens: bool) -> str:
    sql = (
        f"UPDATE am_budget_ledger SET reserved_usd = reserved_usd + {p('usd')},"  # noqa: S608
        f" reserved_tokens = reserved_tokens + {p('tokens')}, updated_at = {p('now')}"
        f" WHERE scope = {p('scope')}"
    )
    if usd:
        sql += f" AND spent_usd + reserved_usd + {p('usd')} <= {p('limit_usd')}"
    if tokens:
        sql += f" AND spent_tokens + reserved_tokens + {p('tokens')} <= {p('limit_tokens')}"
    return sql


_STATEMENTS = {pg: _Statements.of(postgresql=pg) for pg in (False, True)}
"""Built once per dialect; table and column names are constants, never user input."""


def _entry(conn: sa.Connection, scope: str) -> LedgerEntry | None:
    query = sa.select(budget_ledger).where(budget_ledger.c.scope == scope)
    row = conn.execute(query).first()
    return None if row is None else LedgerEntry(**row._mapping)


def _usd_fits(limit: Limit, entry: LedgerEntry, hold: Hold) -> bool:
    return limit.usd is None or (
        entry.spent_usd + entry.reserved_usd + hold.usd <= limit.usd + _USD_SLACK
    )


def _fits(limit: Limit, entry: LedgerEntry, hold: Hold) -> bool:
    return _usd_fits(limit, entry, hold) and (
        limit.tokens is None
        or entry.spent_tokens + entry.reserved_tokens + hold.tokens <= limit.tokens
    )


def _exceeded(limit: Limit, entry: LedgerEntry, hold: Hold) -> BudgetExceeded:
    if not _usd_fits(limit, entry, hold):
        assert limit.usd is not None
        return BudgetExceeded(
            level=limit.name,
            unit="usd",
            limit=limit.usd,
            spent=entry.spent_usd,
            reserved=entry.reserved_usd,
            needed=hold.usd,
        )
    return BudgetExceeded(
        level=limit.name,
        unit="tokens",
        limit=float(limit.tokens or 0),
        spent=float(entry.spent_tokens),
        reserved=float(entry.reserved_tokens),
        needed=float(hold.tokens),
    )


def _hold(row: sa.RowMapping) -> Hold:
    return Hold(
        id=row["id"],
        run_id=row["run_id"],
        call_key=row["call_key"],
        tenant=row["tenant"],
        scopes=tuple(row["scopes"]),
        usd=row["usd"],
        tokens=row["tokens"],
        status=HoldStatus(row["status"]),
    )
