"""Surviving a dropped database connection: one rule and one retry loop for every store.

PostgreSQL ends connections when it restarts, fails over, or when someone terminates
backends (an idle reaper, `pg_terminate_backend`). A pooled connection that died that way
fails the next statement run on it; SQLAlchemy then invalidates the whole pool, so the
next checkout connects afresh. A unit of work (one transaction, or one idempotent
statement) that failed because its connection was lost never committed, so it is run
again: at once, then with backoff while the server is still unreachable, for up to
`RECONNECT_FOR` seconds (as the journal does for its batches). Any other error (a
constraint, a syntax error, a missing table) is raised at once: running it again would
fail the same way.

The stores call `retrying` (async units), `retrying_sync` (units run on a worker thread),
or decorate a method with `reconnecting`; the response cache's own DB-API connections use
`connection_lost` to tell a dead connection from a failed statement.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from contextvars import ContextVar
from typing import Any, ParamSpec, TypeVar

from sqlalchemy.exc import DBAPIError

__all__ = [
    "RECONNECT_FOR",
    "connection_lost",
    "reconnect_delays",
    "reconnecting",
    "retrying",
    "retrying_sync",
]

logger = logging.getLogger("agentmill.store")

RECONNECT_FOR = 30.0
"""Seconds a unit keeps being retried while the database is unreachable: long enough for
a PostgreSQL restart or a failover."""
_FIRST_DELAY = 0.1
_MAX_DELAY = 2.0
_CONNECTION_STATES = ("08", "57P01", "57P02", "57P03")
"""SQLSTATEs of a lost or refused connection: class 08 (connection exception),
admin_shutdown, crash_shutdown, cannot_connect_now (starting up or shutting down)."""

_T = TypeVar("_T")
_P = ParamSpec("_P")

_in_unit: ContextVar[bool] = ContextVar("agentmill_store_unit", default=False)
"""Whether the code runs inside a unit being retried: a store method called by another
(a release that settles, a creation that reads its row back) is part of the caller's unit,
retried with it, so a database that stays down fails it after `RECONNECT_FOR` once, not
once per level of nesting."""


def connection_lost(exc: BaseException) -> bool:
    """Whether `exc` says the connection was lost or could not be opened (the unit did
    not commit), as opposed to a statement that failed on a working connection."""
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        exc = exc.orig if exc.orig is not None else exc
    psycopg = sys.modules.get("psycopg")  # only a PostgreSQL database drops connections
    if psycopg is None or not isinstance(exc, psycopg.OperationalError):
        return False
    state: str | None = getattr(exc, "sqlstate", None)
    # No SQLSTATE: libpq's own errors (connection refused, server closed the connection).
    return state is None or state.startswith(_CONNECTION_STATES)


def reconnect_delays() -> Callable[[BaseException], float | None]:
    """A retry schedule: given the latest error, the seconds to wait before the next try,
    or None to give up (not a lost connection, or `RECONNECT_FOR` has passed). The first
    retry is immediate: after terminated backends the pool reconnects at once."""
    deadline = time.monotonic() + RECONNECT_FOR
    delays = iter(_backoff())
    tries = 0

    def next_delay(error: BaseException) -> float | None:
        nonlocal tries
        tries += 1
        if not connection_lost(error):
            return None
        delay = next(delays)
        if time.monotonic() + delay > deadline:
            logger.error("database unreachable for %.0fs, giving up: %s", RECONNECT_FOR, error)
            return None
        logger.warning("database connection lost (try %d), retrying: %s", tries, error)
        return delay

    return next_delay


def _backoff() -> Any:
    yield 0.0
    delay = _FIRST_DELAY
    while True:
        yield delay
        delay = min(delay * 2, _MAX_DELAY)


def retrying_sync(work: Callable[[], _T]) -> _T:
    """Run a blocking unit of work, again while its connection was lost (see module doc)."""
    if _in_unit.get():
        return work()  # part of a unit retried as a whole
    token = _in_unit.set(True)
    try:
        next_delay = reconnect_delays()
        while True:
            try:
                return work()
            except DBAPIError as exc:
                delay = next_delay(exc)
                if delay is None:
                    raise
            time.sleep(delay)
    finally:
        _in_unit.reset(token)


async def retrying(work: Callable[[], Awaitable[_T]]) -> _T:
    """Run an async unit of work, again while its connection was lost (see module doc)."""
    if _in_unit.get():
        return await work()  # part of a unit retried as a whole
    token = _in_unit.set(True)
    try:
        next_delay = reconnect_delays()
        while True:
            try:
                return await work()
            except DBAPIError as exc:
                delay = next_delay(exc)
                if delay is None:
                    raise
            await asyncio.sleep(delay)
    finally:
        _in_unit.reset(token)


def reconnecting(
    method: Callable[_P, Coroutine[Any, Any, _T]],
) -> Callable[_P, Coroutine[Any, Any, _T]]:
    """Decorate a store method that is one unit of work (one transaction, or statements
    each safe to run again) so that it survives a dropped connection."""

    @functools.wraps(method)
    async def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        return await retrying(lambda: method(*args, **kwargs))

    return wrapper
