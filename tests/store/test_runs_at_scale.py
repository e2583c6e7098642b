"""The runs page at 10,000 runs: every filter returns the right page (cursor pagination
with ties on the creation time), and SQLite answers tenant+status and tenant+workflow
filters from their index. Correctness only: the benchmarks measure speed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from agentmill.store import RunRecord, RunStatus, Store
from tests.store.seed import insert_runs, query_plan, run_row

RUNS = 10_000
T0 = 1_765_000_000.0
STATUSES = list(RunStatus)
TRIGGERS: list[dict[str, Any] | None] = [
    None,
    {"source": "api", "key": "k"},
    {"source": "github", "delivery": "d"},
    {"source": "mcp"},
]


def _rows() -> list[dict[str, Any]]:
    return [
        run_row(
            f"r{i:05d}",
            created_at=T0 + i // 3,  # three runs per second: ties broken by id
            tenant="globex" if i % 5 == 0 else "acme",
            workflow=f"wf{i % 7}",
            status=str(STATUSES[i % len(STATUSES)]),
            trigger=TRIGGERS[i % len(TRIGGERS)],
        )
        for i in range(RUNS)
    ]


@pytest.fixture
async def seeded(store: Store) -> tuple[Store, list[dict[str, Any]]]:
    rows = _rows()
    await insert_runs(store.engine, rows)
    return store, rows


def _expected(rows: list[dict[str, Any]], keep: Callable[[dict[str, Any]], bool]) -> list[str]:
    kept = [row for row in rows if keep(row)]
    kept.sort(key=lambda row: (row["created_at"], row["id"]), reverse=True)
    return [row["id"] for row in kept]


async def _all_pages(store: Store, limit: int, **filters: Any) -> list[list[str]]:
    pages: list[list[str]] = []
    after: tuple[float, str] | None = None
    while True:
        page = await store.list_runs(after=after, limit=limit, **filters)
        if not page:
            return pages
        pages.append([run.id for run in page])
        last: RunRecord = page[-1]
        after = (last.created_at, last.id)


FILTERS: list[tuple[dict[str, Any], Callable[[dict[str, Any]], bool]]] = [
    ({}, lambda row: True),
    ({"status": RunStatus.FAILED}, lambda row: row["status"] == "failed"),
    ({"workflow": "wf3"}, lambda row: row["workflow"] == "wf3"),
    ({"trigger_source": "api"}, lambda row: row["trigger_source"] == "api"),
    ({"trigger_source": "cli"}, lambda row: row["trigger"] is None),
    (
        {"created_after": T0 + 1000, "created_before": T0 + 1200},
        lambda row: T0 + 1000 <= row["created_at"] < T0 + 1200,
    ),
    (
        {"status": RunStatus.SUCCEEDED, "workflow": "wf1", "trigger_source": "github"},
        lambda row: (
            (row["status"], row["workflow"], row["trigger_source"])
            == ("succeeded", "wf1", "github")
        ),
    ),
]


def _of(tenant: str, keep: Callable[[dict[str, Any]], bool]) -> Callable[[dict[str, Any]], bool]:
    return lambda row: row["tenant"] == tenant and keep(row)


async def test_every_filter_pages_through_exactly_its_runs(
    seeded: tuple[Store, list[dict[str, Any]]],
) -> None:
    store, rows = seeded
    for filters, keep in FILTERS:
        for tenant in ("acme", "globex"):
            expected = _expected(rows, _of(tenant, keep))
            assert expected, f"{filters} matches some runs of {tenant}"
            first = await store.list_runs(tenant=tenant, limit=50, **filters)
            assert [run.id for run in first] == expected[:50], filters
            assert all(run.tenant == tenant for run in first)
        pages = await _all_pages(store, 500, tenant="acme", **filters)
        expected = _expected(rows, _of("acme", keep))
        assert [run_id for page in pages for run_id in page] == expected, filters
        assert all(len(page) == 500 for page in pages[:-1])


@pytest.mark.parametrize(
    ("filters", "index"),
    [
        ({"status": RunStatus.RUNNING}, "ix_am_runs_tenant_status_created"),
        ({"workflow": "wf2"}, "ix_am_runs_tenant_workflow_created"),
        ({"trigger_source": "api"}, "ix_am_runs_tenant_trigger_created"),
        (
            {"status": RunStatus.RUNNING, "after": (T0 + 2000, "r06000")},
            "ix_am_runs_tenant_status_created",
        ),
    ],
)
async def test_sqlite_answers_each_filter_from_its_index(
    sqlite_settings: Any, filters: dict[str, Any], index: str
) -> None:
    store = await Store.open(sqlite_settings.resolved_database_url)
    try:
        await insert_runs(store.engine, _rows())
        plan = await query_plan(store, lambda: store.list_runs(tenant="acme", limit=50, **filters))
    finally:
        await store.close()
    assert f"USING INDEX {index}" in plan, plan
    assert "USE TEMP B-TREE FOR ORDER BY" not in plan, plan
