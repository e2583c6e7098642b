"""Dropped database connections: every store the engine uses reconnects and goes on, and an
unexpected database error reaches users as a short message with an id, never as SQL."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import SecretStr
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from agentmill.agents.models import override_models
from agentmill.engine.engine import Engine
from agentmill.policy.cache import close_response_cache
from agentmill.settings import Settings
from agentmill.store import RunStatus, reconnect
from agentmill.store.approvals import ApprovalRecord, ApprovalStatus, ApprovalStore
from agentmill.store.budgets import BudgetStore, Hold, Limit
from agentmill.store.cache import CacheBackend, CacheRow
from agentmill.store.db import create_sync_engine
from agentmill.store.deliveries import DeliveryStore
from agentmill.store.keys import KeyStore, Role
from agentmill.store.ratelimits import RateLimitStore, RateRule
from agentmill.store.records import RunRecord
from agentmill.store.store import Store
from agentmill.store.tables import rate_limits
from tests.conftest import PG_ADMIN_URL, started_engine
from tests.engine.helpers import run_yaml
from tests.fakes import ScriptedModel
from tests.servers import free_port

AGENT = "{model: openai:gpt-4o, instructions: be brief, max_tokens: 200, retries: 0}"


def project(agent: str = AGENT, *, head: str = "", budget: str | None = "{usd: 5.0}") -> str:
    budget_line = f"    budget: {budget}\n" if budget else ""
    return f"""
version: 1
{head}
agents:
  a: {agent}
workflows:
  w:
{budget_line}    steps:
      - {{id: s1, agent: a, prompt: "one"}}
      - {{id: s2, agent: a, needs: [s1], prompt: "two"}}
  gated:
    steps:
      - {{id: draft, agent: a, prompt: "draft"}}
      - {{id: sign-off, needs: [draft], approval: {{prompt: "ok?"}}}}
      - {{id: publish, agent: a, needs: [sign-off], prompt: "publish"}}
"""


def terminate_backends(url: str) -> int:
    """End every session on the test's database, as a restart or an idle reaper would;
    waits until they are gone."""
    import psycopg

    database = url.rsplit("/", 1)[1]
    query = (
        "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity"
        " WHERE datname = %s AND pid <> pg_backend_pid()"
    )
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        ended = [row[0] for row in conn.execute(query, (database,)).fetchall()]
    assert any(ended)  # False: a session that ended on its own meanwhile
    return sum(ended)


@pytest.fixture
def scripted() -> Iterator[ScriptedModel]:
    model = ScriptedModel()
    with override_models(model.model):
        yield model


@pytest.fixture
def pg_settings(fresh_pg_url: str, tmp_path: Any) -> Settings:
    return Settings(
        home=tmp_path / ".agentmill",
        database_url=fresh_pg_url,
        heartbeat_interval=0.5,
        cache_secret=SecretStr("0123456789abcdef" * 4),
    )


@pytest.fixture
async def pg_engine(pg_settings: Settings) -> AsyncIterator[Engine]:
    async with started_engine(pg_settings) as engine:
        try:
            yield engine
        finally:
            if engine._executor is not None:  # pyright: ignore[reportPrivateUsage]
                await close_response_cache(engine._executor.policies)  # pyright: ignore[reportPrivateUsage]


async def run_twice_with_backends_terminated_between(
    engine: Engine, url: str, text: str
) -> tuple[Any, Any]:
    first, _ = await run_yaml(engine, text)
    assert first.status is RunStatus.SUCCEEDED, first.error
    terminate_backends(url)
    second, events = await asyncio.wait_for(run_yaml(engine, text), 60)
    assert second.status is RunStatus.SUCCEEDED, second.error
    assert [e.kind for e in events if e.kind.startswith("step_") and "fail" in e.kind] == []
    return first, second


@pytest.mark.postgres
async def test_a_budgeted_run_after_terminated_backends_succeeds(
    pg_engine: Engine, fresh_pg_url: str, scripted: ScriptedModel
) -> None:
    await run_twice_with_backends_terminated_between(pg_engine, fresh_pg_url, project())
    assert scripted.calls == ["one", "two", "one", "two"]


@pytest.mark.postgres
async def test_a_rate_limited_run_after_terminated_backends_succeeds(
    pg_engine: Engine, fresh_pg_url: str, scripted: ScriptedModel
) -> None:
    limits = 'limits: {"openai:gpt-4o": {rpm: 6000, concurrency: 2}}'
    text = project(head=limits, budget=None)
    await run_twice_with_backends_terminated_between(pg_engine, fresh_pg_url, text)
    assert len(scripted.calls) == 4


@pytest.mark.postgres
async def test_the_cache_reads_and_writes_after_terminated_backends(fresh_pg_url: str) -> None:
    from agentmill.store import Store

    store = await Store.open(fresh_pg_url)  # the schema
    await store.close()
    backend = CacheBackend(fresh_pg_url, max_bytes=1_000_000, flush_interval=0.05)
    try:
        backend.put(cache_row("k1"))
        await backend.commit()
        assert await backend.get("acme", "k1") == cache_row("k1")  # the reader connects
        terminate_backends(fresh_pg_url)
        assert await backend.get("acme", "k1") == cache_row("k1")
        backend.put(cache_row("k2"))
        await backend.commit()
        terminate_backends(fresh_pg_url)
        assert await backend.get("acme", "k2") == cache_row("k2")
    finally:
        await backend.aclose()


def cache_row(key: str) -> CacheRow:
    return CacheRow(
        tenant="acme", key=key, model="m", value='"v"', signature="s", size=3,
        created_at=1.0, expires_at=4e9, last_used_at=1.0,
    )  # fmt: skip


@pytest.mark.postgres
async def test_an_approval_decided_after_terminated_backends_goes_on(
    pg_engine: Engine, fresh_pg_url: str, scripted: ScriptedModel
) -> None:
    from agentmill.spec.loader import load_project_text

    spec = load_project_text(project(), "test.yaml").spec
    run = await pg_engine.submit(spec, "gated", {})
    async with asyncio.timeout(30):
        async for event in pg_engine.follow(run.id):
            if event.kind == "approval_requested":
                break
    terminate_backends(fresh_pg_url)
    # Decided before DBOS's notification listener has reconnected (about a second): the
    # wake-up is lost, and the gate reads the decision at DBOS's next re-check
    # (`engine/runtime.py` RECHECK_MESSAGES_EVERY), well before DBOS's own 60 s.
    await pg_engine.decide(run.id, "sign-off", approve=True, by="alice")
    async with asyncio.timeout(30):
        events = [event async for event in pg_engine.follow(run.id)]
    final = await pg_engine.store.get_run(run.id)
    assert final.status is RunStatus.SUCCEEDED, final.error
    assert events[-1].kind == "run_finished"
    assert scripted.calls == ["draft", "publish"]


@pytest.mark.postgres
async def test_keys_are_checked_after_terminated_backends(fresh_pg_url: str) -> None:
    from agentmill.store import Store

    store = await Store.open(fresh_pg_url)
    try:
        keys = KeyStore(store.engine)
        key, secret = await keys.create(tenant="acme", role=Role.OPERATOR)
        assert await keys.verify(secret) == key
        terminate_backends(fresh_pg_url)
        assert await keys.verify(secret) == key
        terminate_backends(fresh_pg_url)
        assert (await keys.revoke(key.id)).revoked_at is not None
    finally:
        await store.close()


async def test_an_unexpected_database_error_is_shown_as_an_id_never_as_sql(
    isolated_engine: Engine, scripted: ScriptedModel, caplog: pytest.LogCaptureFixture
) -> None:
    async with isolated_engine.store.engine.begin() as conn:
        await conn.execute(sa.text("ALTER TABLE am_budget_holds RENAME TO am_budget_holds_gone"))
    with caplog.at_level(logging.ERROR):
        run, events = await asyncio.wait_for(run_yaml(isolated_engine, project()), 60)
    assert_shown_as_an_id(run, events, await isolated_engine.store.steps(run.id), caplog)
    assert run.error is not None
    assert run.error.startswith("step 's1' failed: internal error (id ")


async def test_a_fallback_chain_records_unexpected_errors_as_ids(
    sqlite_engine: Engine, scripted: ScriptedModel, caplog: pytest.LogCaptureFixture
) -> None:
    async with sqlite_engine.store.engine.begin() as conn:
        await conn.execute(sa.text("ALTER TABLE am_budget_holds RENAME TO am_budget_holds_gone"))
    agent = AGENT.replace("retries: 0", "retries: 0, fallback: [anthropic:claude-sonnet-4-5]")
    with caplog.at_level(logging.ERROR):
        run, events = await asyncio.wait_for(run_yaml(sqlite_engine, project(agent)), 60)
    steps = await sqlite_engine.store.steps(run.id)
    assert_shown_as_an_id(run, events, steps, caplog)
    (failed,) = [s for s in steps if s.status == "failed"]
    assert failed.details is not None
    assert [entry["model"] for entry in failed.details["fallback"]] == [
        "openai:gpt-4o",
        "anthropic:claude-sonnet-4-5",
    ]


def assert_shown_as_an_id(
    run: Any, events: list[Any], steps: list[Any], caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing users see holds SQL; each id shown is logged once with the exception."""
    assert run.status is RunStatus.FAILED
    shown = [run.error or "", *(str(e.data) for e in events)]
    shown += [f"{s.error} {s.details}" for s in steps]
    for text in shown:
        assert "am_budget" not in text, text
        assert "INSERT" not in text, text
    ids = set(INTERNAL_ID.findall(" ".join(shown)))
    assert ids, run.error
    for error_id in ids:
        logged = [r for r in caplog.records if error_id in r.getMessage()]
        assert len(logged) == 1
        assert logged[0].exc_info is not None
        assert "am_budget_holds" in str(logged[0].exc_info[1])  # the details are in the log


INTERNAL_ID = re.compile(r"internal error \(id ([0-9a-f]{12})\): see the worker log")


class DatabaseProxy:
    """A TCP proxy in front of PostgreSQL that can go down and come back on the same port,
    as the database server does when it restarts or fails over."""

    def __init__(self) -> None:
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def url(self, database_url: str) -> str:
        return database_url.replace("127.0.0.1:5432", f"127.0.0.1:{self.port}")

    async def up(self) -> None:
        self._server = await asyncio.start_server(self._pipe, "127.0.0.1", self.port)

    async def down(self) -> None:
        """Refuse new connections and cut the open ones."""
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await self._server.wait_closed()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", 5432)
        self._writers.update({writer, upstream_writer})

        async def copy(source: asyncio.StreamReader, target: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    target.write(data)
                    await target.drain()
            except OSError:
                pass
            finally:
                target.transport.abort()
                self._writers.discard(target)

        await asyncio.gather(copy(reader, upstream_writer), copy(upstream_reader, writer))


@pytest.mark.postgres
async def test_stores_wait_for_a_restarting_database(fresh_pg_url: str) -> None:
    from agentmill.store import Store
    from agentmill.store.db import create_engine

    store = await Store.open(fresh_pg_url)  # the schema
    await store.close()
    proxy = DatabaseProxy()
    await proxy.up()
    engine = create_engine(proxy.url(fresh_pg_url))
    blocking = create_sync_engine(proxy.url(fresh_pg_url), fast=True)
    budgets = BudgetStore(blocking)
    keys = KeyStore(engine)
    try:
        key, secret = await keys.create(tenant="acme", role=Role.OPERATOR)
        hold = Hold(
            id="h1", run_id="r", call_key="c", tenant="acme", scopes=("s",), usd=0.1, tokens=1
        )
        assert await budgets.reserve(hold, [Limit(scope="s", name="test", usd=1.0)])
        await proxy.down()  # the server restarts: connections cut, new ones refused...
        asyncio.get_running_loop().call_later(0.5, lambda: asyncio.ensure_future(proxy.up()))
        assert await keys.verify(secret) == key  # ...and the stores wait until it is back
        await proxy.down()
        asyncio.get_running_loop().call_later(0.5, lambda: asyncio.ensure_future(proxy.up()))
        assert await budgets.settle(hold, usd=0.05, tokens=1)
    finally:
        await engine.dispose()
        blocking.dispose()
        await proxy.down()


class _AckLostOnce:
    """An async engine whose transaction number `lose` (1: the first) commits, then reports
    its connection lost, as when the database dies after applying a commit and before
    answering it."""

    def __init__(self, engine: AsyncEngine, *, lose: int = 1) -> None:
        self._engine = engine
        self._lose = lose
        self.begun = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    @contextlib.asynccontextmanager
    async def begin(self) -> AsyncGenerator[Any]:
        self.begun += 1
        async with self._engine.begin() as conn:
            yield conn
        if self.begun == self._lose:
            raise DBAPIError("COMMIT", None, Exception("gone"), connection_invalidated=True)


async def test_a_claim_whose_commit_answer_was_lost_is_still_taken(
    sqlite_engine: Engine,
) -> None:
    """The retry of a claim that did commit finds its own row: the delivery is processed
    (it was answered as a duplicate of itself, and its runs never started)."""
    flaky = _AckLostOnce(sqlite_engine.store.engine)
    store = DeliveryStore(flaky, tenant="acme")  # pyright: ignore[reportArgumentType]
    claim = await store.claim("github", "d1", event="push")
    assert flaky.begun == 2  # the insert, then its retry
    assert claim.taken
    again = await DeliveryStore(sqlite_engine.store.engine, tenant="acme").claim(
        "github", "d1", event="push"
    )
    assert not again.taken  # a real second copy is still a duplicate


async def test_a_takeover_whose_commit_answer_was_lost_is_still_taken(
    sqlite_engine: Engine,
) -> None:
    """The same for a delivery whose earlier processing ended in an error: the retried
    compare-and-set finds its own takeover."""
    plain = DeliveryStore(sqlite_engine.store.engine, tenant="acme")
    assert (await plain.claim("github", "d2", event="push")).taken
    await plain.finish("github", "d2", outcome="error", run_ids=[])
    flaky = _AckLostOnce(sqlite_engine.store.engine, lose=2)  # the insert fails, then this
    store = DeliveryStore(flaky, tenant="acme")  # pyright: ignore[reportArgumentType]
    claim = await store.claim("github", "d2", event="push")
    assert flaky.begun == 3  # the insert, the takeover, the retried insert
    assert claim.taken


async def test_a_decision_whose_commit_answer_was_lost_is_still_won(
    sqlite_engine: Engine,
) -> None:
    """The retried compare-and-set finds its own decision: the decider is not told that
    they had already decided (and the gate is woken at once, not at its next re-read)."""
    now = time.time()
    row = ApprovalRecord(
        run_id="r", step_id="gate", tenant="acme", status=ApprovalStatus.PENDING,
        prompt="ok?", on_timeout="reject", created_at=now, expires_at=now + 3600,
    )  # fmt: skip
    await ApprovalStore(sqlite_engine.store.engine).create(row)
    flaky = _AckLostOnce(sqlite_engine.store.engine)
    store = ApprovalStore(flaky)  # pyright: ignore[reportArgumentType]
    won = await store.decide("r", "gate", tenant="acme", approve=True, comment=None, by="alice")
    assert flaky.begun == 2  # the decision, then its retry
    assert won
    again = ApprovalStore(sqlite_engine.store.engine)
    assert not await again.decide("r", "gate", tenant="acme", approve=True, comment=None, by="bob")


async def test_a_unit_inside_a_retried_unit_is_retried_once_as_part_of_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Store methods call one another (a rate-limit release settles, an approval's creation
    reads it back): the outer unit's retries are the only ones, so a database that stays
    down fails it after `RECONNECT_FOR`, not after that many seconds per nesting level."""
    monkeypatch.setattr(reconnect, "RECONNECT_FOR", 0.3)
    outer_tries = inner_tries = 0

    async def inner() -> None:
        nonlocal inner_tries
        inner_tries += 1
        raise DBAPIError("SELECT 1", None, Exception("gone"), connection_invalidated=True)

    async def outer() -> None:
        nonlocal outer_tries
        outer_tries += 1
        await reconnect.retrying(inner)

    with pytest.raises(DBAPIError):
        await reconnect.retrying(outer)
    assert outer_tries > 1
    assert inner_tries == outer_tries


async def _token_tat(engine: Engine, key: str) -> float:
    query = sa.select(rate_limits.c.token_tat).where(rate_limits.c.key == key)
    async with engine.store.engine.connect() as conn:
        return float((await conn.execute(query)).scalar_one())


async def test_a_token_correction_whose_commit_answer_was_lost_is_applied_once(
    isolated_engine: Engine,
) -> None:
    """A settlement run again after its commit was applied finds it recorded: the token
    correction is not given back (or charged) twice."""
    rule = RateRule(key="openai", token_interval=1.0)
    plain = RateLimitStore(isolated_engine.store.engine, clock=lambda: 1000.0)
    assert (await plain.reserve([rule], tokens=10, lookahead=1.0)).reserved
    assert await _token_tat(isolated_engine, "openai") == 1010.0
    flaky = _AckLostOnce(isolated_engine.store.engine)
    store = RateLimitStore(flaky, clock=lambda: 1000.0)  # pyright: ignore[reportArgumentType]
    await store.adjust_tokens([rule], tokens=-4)
    assert flaky.begun == 2  # the settlement, then its retry
    assert await _token_tat(isolated_engine, "openai") == 1006.0
    await plain.adjust_tokens([rule], tokens=-4)  # a second correction is one
    assert await _token_tat(isolated_engine, "openai") == 1002.0


def _run_record(run_id: str) -> RunRecord:
    return RunRecord(
        id=run_id, tenant="acme", workflow="w", status=RunStatus.PENDING, inputs={"a": [1]},
        outputs=None, error=None, snapshot={"steps": []}, config_path=None, usage=None,
        created_at=time.time(), started_at=None, finished_at=None, owner=None,
        owner_pid=None, owner_host=None, heartbeat_at=None, cancel_requested=False,
    )  # fmt: skip


async def test_a_run_whose_creation_answer_was_lost_is_created(
    isolated_engine: Engine,
) -> None:
    """The retried insert finds the run's own row: the submit succeeds (it failed as an
    internal error while the run existed); another run with the same id still fails."""
    run = _run_record("r-lost")
    flaky = _AckLostOnce(isolated_engine.store.engine)
    store = Store(flaky, isolated_engine.store.journal)  # pyright: ignore[reportArgumentType]
    await store.create_run(run)
    assert flaky.begun == 2  # the insert, then its retry
    assert await isolated_engine.store.get_run("r-lost", tenant="acme") == run
    with pytest.raises(IntegrityError):
        await isolated_engine.store.create_run(dataclasses.replace(run, workflow="other"))
