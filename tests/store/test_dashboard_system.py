"""The system page's data: workers and their heartbeats, the queue, webhook deliveries,
the database in use; and the costs page's budgets with how much of each is used."""

from __future__ import annotations

from typing import Any

from agentmill.settings import Settings
from agentmill.store import (
    BudgetUsage,
    Store,
    budget_usage,
    database_in_use,
    queue_depth,
    recent_deliveries,
    workers,
)
from agentmill.store.db import create_engine
from agentmill.store.deliveries import DeliveryStore
from agentmill.store.keys import KeyStore, Role
from agentmill.store.tables import budget_ledger
from tests.store.seed import insert, insert_runs, run_row

NOW = 1_765_000_800.0  # 2025-12-06 06:00 UTC


async def test_workers_are_the_owners_of_active_runs(store: Store) -> None:
    owned: dict[str, Any] = {"owner": "w1", "owner_host": "h1", "owner_pid": 11}
    await insert_runs(
        store.engine,
        [
            run_row("a", created_at=1, status="running", heartbeat_at=NOW - 3, **owned),
            run_row("b", created_at=2, status="running", heartbeat_at=NOW - 1, **owned),
            run_row(
                "c",
                created_at=3,
                status="pending",
                tenant="globex",
                heartbeat_at=NOW,
                owner="w2",
                owner_host="h2",
                owner_pid=22,
            ),
            run_row("d", created_at=4, status="succeeded", owner="w3", heartbeat_at=NOW),
            run_row("q1", created_at=5, status="pending"),
            run_row("q2", created_at=6, status="pending", tenant="globex"),
        ],
    )
    found = await workers(store.engine)
    assert [(w.owner, w.host, w.pid, w.last_heartbeat, w.running_runs) for w in found] == [
        ("w2", "h2", 22, NOW, 1),
        ("w1", "h1", 11, NOW - 1, 2),
    ]
    assert [w.owner for w in await workers(store.engine, tenant="acme")] == ["w1"]
    assert await queue_depth(store.engine) == 2
    assert await queue_depth(store.engine, tenant="acme") == 1


async def test_recent_deliveries_of_the_tenant_newest_first(store: Store) -> None:
    acme = DeliveryStore(store.engine, tenant="acme")
    for delivery in ("d1", "d2", "d3"):
        await acme.claim("github", delivery, event="push")
    await acme.finish("github", "d2", outcome="started", run_ids=["r1"])
    await DeliveryStore(store.engine, tenant="globex").claim("github", "g1", event="push")
    found = await recent_deliveries(store.engine, "acme", limit=2)
    assert [(d.id, d.outcome, d.run_ids) for d in found] == [
        ("d3", "processing", []),
        ("d2", "started", ["r1"]),
    ]
    assert [d.id for d in await recent_deliveries(store.engine, "globex")] == ["g1"]


async def test_the_database_in_use_hides_its_password(
    store: Store, isolated_settings: Settings
) -> None:
    info = database_in_use(store.engine)
    assert info.dialect in isolated_settings.resolved_database_url
    secret = create_engine("postgresql://agent:s3cret-pw@db.internal:5432/mill")
    try:
        shown = database_in_use(secret)
    finally:
        await secret.dispose()
    assert shown.dialect == "postgresql"
    assert "s3cret-pw" not in shown.url
    assert shown.url.endswith("agent:***@db.internal:5432/mill")


def _ledger(
    scope: str, *, spent: float, reserved: float = 0.0, tenant: str = "acme"
) -> dict[str, object]:
    return {
        "scope": scope, "tenant": tenant, "spent_usd": spent, "spent_tokens": 100,
        "reserved_usd": reserved, "reserved_tokens": 0, "updated_at": NOW,
    }  # fmt: skip


async def test_budget_usage_lists_each_scope_with_its_limit_when_known(store: Store) -> None:
    key, _ = await KeyStore(store.engine).create(
        tenant="acme", role=Role.OPERATOR, budget={"day": {"usd": 2.0}}
    )
    snapshot = {
        "workflow": {"steps": [], "budget": {"usd": 1.0}},
        "agents": {"writer": {"budget": {"tokens": 500}}, "critic": {}},
    }
    await insert_runs(
        store.engine,
        [
            run_row("live", created_at=NOW - 60, status="running", snapshot=snapshot),
            run_row("given", created_at=NOW - 50, status="running", budget={"usd": 0.1}),
            run_row("done", created_at=NOW - 40, status="succeeded", snapshot=snapshot),
        ],
    )
    await insert(
        store.engine,
        budget_ledger,
        [
            _ledger("tenant:acme/day:2025-12-06", spent=0.5, reserved=0.25),
            _ledger("tenant:acme/day:2025-12-05", spent=9.0),  # yesterday: not listed
            _ledger(f"key:{key.id}/day:2025-12-06", spent=1.0),
            _ledger("run:live", spent=0.2),
            _ledger("run:live/agent:writer", spent=0.2),
            _ledger("run:done", spent=0.3),  # finished: not listed
            _ledger("tenant:globex/day:2025-12-06", spent=7.0, tenant="globex"),
        ],
    )
    usage = await budget_usage(
        store.engine, tenant="acme", tenant_limits={"month": {"usd": 100.0}}, now=NOW
    )
    by_scope = {u.scope: u for u in usage}
    assert list(by_scope) == [
        "tenant:acme/day:2025-12-06",
        "tenant:acme/month:2025-12",
        f"key:{key.id}/day:2025-12-06",
        "run:given",
        "run:live",
        "run:live/agent:writer",
    ]
    today = by_scope["tenant:acme/day:2025-12-06"]
    assert (today.spent_usd, today.reserved_usd, today.limit_usd) == (0.5, 0.25, None)
    month = by_scope["tenant:acme/month:2025-12"]
    assert (month.spent_usd, month.limit_usd, month.used_fraction) == (0.0, 100.0, 0.0)
    key_day = by_scope[f"key:{key.id}/day:2025-12-06"]
    assert (key_day.level, key_day.limit_usd, key_day.used_fraction) == ("key", 2.0, 0.5)
    assert by_scope["run:live"].limit_usd == 1.0
    assert "workflow 'w' per-run budget" in by_scope["run:live"].name
    assert by_scope["run:given"].limit_usd == 0.1
    writer = by_scope["run:live/agent:writer"]
    assert (writer.level, writer.limit_usd, writer.limit_tokens) == ("agent", None, 500)


async def test_without_a_config_the_tenants_limits_are_unknown(store: Store) -> None:
    await insert(store.engine, budget_ledger, [_ledger("tenant:acme/month:2025-12", spent=3.0)])
    usage = await budget_usage(store.engine, tenant="acme", tenant_limits=None, now=NOW)
    assert usage == [
        BudgetUsage(
            scope="tenant:acme/month:2025-12",
            level="tenant",
            name="tenant 'acme' monthly budget",
            spent_usd=3.0,
            spent_tokens=100,
        )
    ]
    assert usage[0].used_fraction is None
    assert await budget_usage(store.engine, tenant="globex", tenant_limits={}, now=NOW) == []
