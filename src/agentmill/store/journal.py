"""Group commit for the hot path: step checkpoints and events from many tasks at once.

Writers queue rows without waiting; `commit()` waits until everything queued so far is in
the database. A writer thread with its own synchronous connection takes every row queued
since its last transaction and writes them in one, so a fan-out of hundreds of calls costs a
handful of commits, and the event loop never waits on the database driver. (Measured: the
async driver's per-statement thread hops cost several ms of CPU per step; see
docs/benchmarks.md.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from agentmill.store.db import create_sync_engine
from agentmill.store.records import CallRecord, EventRecord, StepRecord

__all__ = ["Journal"]

logger = logging.getLogger("agentmill.store")

_STEP_FIELDS = [f.name for f in fields(StepRecord)]
_EVENT_FIELDS = [f.name for f in fields(EventRecord)]
_CALL_FIELDS = [f.name for f in fields(CallRecord)]
_JSON_FIELDS = frozenset({"output", "usage", "data", "details", "arguments", "result"})
_RETRY_FOR = 30.0  # long enough for a PostgreSQL restart
_FIRST_RETRY_DELAY = 0.1
_MAX_RETRY_DELAY = 2.0
_Waiter = tuple[asyncio.AbstractEventLoop, "asyncio.Future[None]"]


class Journal:
    """Queues step, call and event rows and writes them in batched transactions."""

    def __init__(self, url: str, *, flush_interval: float = 0.05) -> None:
        self._engine = create_sync_engine(url)
        self._step_sql, self._event_sql, self._call_sql = _statements(self._engine.dialect.name)
        self._connection: Any = None
        self._flush_interval = flush_interval
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._events: list[dict[str, Any]] = []
        self._steps: dict[tuple[str, str], dict[str, Any]] = {}
        self._calls: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._run_updates: list[tuple[dict[str, Any], dict[str, Any]]] = []
        self._waiters: list[_Waiter] = []
        self._flushing = False
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="agentmill-journal", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def add_event(self, event: EventRecord) -> None:
        row = _event_row(event)
        with self._lock:
            self._events.append(row)

    def put_step(self, step: StepRecord) -> None:
        row = {name: getattr(step, name) for name in _STEP_FIELDS}
        row["status"] = str(step.status)
        row["output"] = None if step.output is None else json.dumps(step.output)
        row["usage"] = None if step.usage is None else json.dumps(step.usage)
        row["details"] = None if step.details is None else json.dumps(step.details)
        with self._lock:
            self._steps[(step.run_id, step.key)] = row

    def put_call(self, call: CallRecord) -> None:
        """Queue a model request's or tool call's record (the latest one per call wins)."""
        row = {name: getattr(call, name) for name in _CALL_FIELDS}
        row["status"] = str(call.status)
        for name in ("arguments", "result", "usage", "details"):
            row[name] = None if row[name] is None else json.dumps(row[name])
        with self._lock:
            self._calls[(call.run_id, call.step, call.call_id)] = row

    def add_final(self, event: EventRecord, *, expected_owner: str, **values: Any) -> None:
        """Queue a run's last event with its final state: one transaction, and only if
        `expected_owner` still owns the run. A displaced owner writes neither, so its
        terminal event can never end the followers of the run's new execution."""
        row = {
            k: json.dumps(v) if k in _JSON_FIELDS | {"outputs"} else v for k, v in values.items()
        }
        if "status" in row:
            row["status"] = str(row["status"])
        row["id"] = event.run_id
        row["expected_owner"] = expected_owner
        with self._lock:
            self._run_updates.append((row, _event_row(event)))

    async def commit(self) -> None:
        """Wait until every row queued before this call is committed."""
        if self._closing:
            raise RuntimeError("the journal is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if not (
                self._events or self._steps or self._calls or self._run_updates or self._flushing
            ):
                return
            self._waiters.append((loop, future))
        self._wake.set()
        await asyncio.shield(future)

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        if self._thread.is_alive():
            await asyncio.to_thread(self._thread.join)
        if self._connection is not None:
            self._connection.close()
        self._engine.dispose()

    def _run(self) -> None:
        while True:
            self._wake.wait(self._flush_interval)
            self._wake.clear()
            self._flush()
            with self._lock:
                idle = not (
                    self._events or self._steps or self._calls or self._run_updates or self._waiters
                )
            if self._closing and idle:
                return

    def _flush(self) -> None:
        with self._lock:
            event_rows, self._events = self._events, []
            step_rows, self._steps = list(self._steps.values()), {}
            call_rows, self._calls = list(self._calls.values()), {}
            run_rows, self._run_updates = self._run_updates, []
            waiters, self._waiters = self._waiters, []
            self._flushing = bool(event_rows or step_rows or call_rows or run_rows)
        error: BaseException | None = None
        try:
            if event_rows or step_rows or call_rows or run_rows:
                batch = _Batch(step_rows, event_rows, run_rows, call_rows)
                error = self._write_with_retries(batch)
        finally:
            with self._lock:
                self._flushing = False
        for loop, future in waiters:
            loop.call_soon_threadsafe(_resolve, future, error)

    def _write_with_retries(self, batch: _Batch) -> BaseException | None:
        """Write the batch; a busy or restarting database gets a few tries with backoff."""
        delay = _FIRST_RETRY_DELAY
        deadline = time.monotonic() + _RETRY_FOR
        attempt = 0
        while True:
            attempt += 1
            try:
                self._write(batch)
                return None
            except Exception as exc:  # noqa: BLE001 - driver errors vary; all retried, then reported
                logger.warning("journal write attempt %d failed: %s", attempt, exc)
                self._reconnect()
                if time.monotonic() + delay > deadline or self._closing:
                    logger.error("journal write of %d events abandoned", len(batch.events))
                    return exc
                time.sleep(delay)
                delay = min(delay * 2, _MAX_RETRY_DELAY)

    def _write(self, batch: _Batch) -> None:
        """One transaction on a DB-API connection kept by this thread (no per-row overhead)."""
        if self._connection is None:
            self._connection = self._open_connection()
        dialect = self._engine.dialect.name
        cursor = self._connection.cursor()
        try:
            for sql, rows in (
                (self._step_sql, batch.steps),
                (self._call_sql, batch.calls),
                (self._event_sql, batch.events),
            ):
                if rows:
                    cursor.executemany(sql, rows)
            for row, event in batch.runs:
                cursor.execute(_run_update_sql(dialect, row), row)
                if cursor.rowcount == 1:
                    cursor.execute(self._event_sql, event)
            self._connection.commit()
        finally:
            cursor.close()

    def _open_connection(self) -> Any:
        connection = self._engine.raw_connection()
        if self._engine.dialect.name == "postgresql":
            # A worker crash loses nothing (the server has the commit); only a database
            # server crash can lose the last few hundred ms, whose calls then run again.
            # Same trade-off as SQLite's WAL with synchronous=NORMAL; see docs/design.md.
            cursor = connection.cursor()
            cursor.execute("SET synchronous_commit TO off")
            cursor.close()
            connection.commit()
        return connection

    def _reconnect(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(SQLAlchemyError):
                self._connection.invalidate()
            self._connection = None


def _event_row(event: EventRecord) -> dict[str, Any]:
    row = {name: getattr(event, name) for name in _EVENT_FIELDS}
    row["data"] = json.dumps(row["data"])
    return row


@dataclass(frozen=True)
class _Batch:
    steps: list[dict[str, Any]]
    events: list[dict[str, Any]]
    runs: list[tuple[dict[str, Any], dict[str, Any]]]
    """Owner-fenced run updates, each with the terminal event written only if it applies."""
    calls: list[dict[str, Any]]


def _placeholder(dialect: str, column: str) -> str:
    if dialect == "sqlite":
        return f":{column}"
    json_column = column in _JSON_FIELDS or column == "outputs"
    return f"%({column})s::json" if json_column else f"%({column})s"


def _run_update_sql(dialect: str, row: dict[str, Any]) -> str:
    columns = [c for c in row if c not in {"id", "expected_owner"}]
    assignments = ", ".join(f"{c} = {_placeholder(dialect, c)}" for c in columns)
    where = (
        f"id = {_placeholder(dialect, 'id')} AND owner = {_placeholder(dialect, 'expected_owner')}"
    )
    # Column names come from agentmill's own code, never from user input.
    return f"UPDATE am_runs SET {assignments} WHERE {where}"  # noqa: S608


def _statements(dialect: str) -> tuple[str, str, str]:
    """The step upsert, event insert and call upsert in the dialect's parameter style."""

    def insert(table: str, columns: list[str]) -> str:
        values = ", ".join(_placeholder(dialect, c) for c in columns)
        # Table and column names are constants of this module, never user input.
        return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({values})"  # noqa: S608

    updates = ", ".join(f"{c} = excluded.{c}" for c in _STEP_FIELDS if c not in {"run_id", "key"})
    step_sql = (
        insert("am_steps", _STEP_FIELDS) + f" ON CONFLICT (run_id, key) DO UPDATE SET {updates}"
    )
    # A duplicate (run, seq) can only be a replay of an event already stored: keep the first.
    event_sql = insert("am_events", _EVENT_FIELDS) + " ON CONFLICT (run_id, seq) DO NOTHING"
    call_updates = ", ".join(
        f"{c} = excluded.{c}" for c in _CALL_FIELDS if c not in {"run_id", "step", "call_id"}
    )
    call_sql = (
        insert("am_calls", _CALL_FIELDS)
        + f" ON CONFLICT (run_id, step, call_id) DO UPDATE SET {call_updates}"
    )
    return step_sql, event_sql, call_sql


def _resolve(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
