"""The system page in-process: workers and their heartbeats (admins only: they show every
tenant's load), the queue, the tenant's webhook deliveries, the database in use with its
password hidden, the version and schema, the live fragment."""

from __future__ import annotations

import asyncio
import html
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agentmill import __version__
from agentmill.settings import Settings
from agentmill.store.db import SCHEMA_REVISION
from agentmill.store.deliveries import DeliveryStore
from tests.store.seed import insert_runs, run_row
from tests.web.inprocess import WebApp, dashboard_app, text_of

PROJECT = """
version: 1
agents:
  writer: {model: openai:gpt-4o}
workflows:
  gated:
    steps:
      - {id: draft, agent: writer, prompt: "draft"}
      - id: sign-off
        needs: [draft]
        approval: {prompt: "Publish?", timeout: 1h}
"""

NOW = time.time()


@pytest.fixture
async def site(isolated_settings: Settings) -> AsyncIterator[WebApp]:
    """An API-only server (no worker of its own: nothing adopts the rows a test writes),
    heartbeats every 20 s (stale after 60 s); acme is the metrics tenant (its admins run the
    platform), globex an ordinary tenant."""
    update = {"heartbeat_interval": 20.0, "metrics_tenant": "acme"}
    settings = isolated_settings.model_copy(update=update)
    async with dashboard_app(settings, PROJECT, workers=0) as opened:
        yield opened


async def seed_workers(site: WebApp) -> None:
    """w-fresh runs two acme runs (heartbeat 3 s ago); w-stale a globex run (10 min ago);
    one acme run and two globex runs wait for a worker."""
    now = time.time()
    fresh: dict[str, Any] = {"owner": "w-fresh", "owner_host": "host-a", "owner_pid": 4242}
    stale: dict[str, Any] = {"owner": "w-stale", "owner_host": "host-b", "owner_pid": 5151}
    await insert_runs(site.services.engine.store.engine, [
        run_row("a1", created_at=now - 30, status="running", heartbeat_at=now - 3, **fresh),
        run_row("a2", created_at=now - 20, status="pending", heartbeat_at=now - 5, **fresh),
        run_row("g1", created_at=now - 900, status="running", tenant="globex",
                heartbeat_at=now - 600, **stale),
        run_row("q1", created_at=now - 10, status="pending"),
        run_row("q2", created_at=now - 10, status="pending", tenant="globex"),
        run_row("q3", created_at=now - 10, status="pending", tenant="globex"),
    ])  # fmt: skip


def worker_rows(page: str) -> dict[str, str]:
    """Executor -> the text of its row."""
    rows = re.findall(r'<tr class="worker[^"]*">(.*?)</tr>', page, re.DOTALL)
    found: dict[str, str] = {}
    for row in rows:
        owner = re.search(r"<code>(.*?)</code>", row)
        assert owner is not None
        found[html.unescape(owner.group(1))] = text_of(row)
    return found


def stat(page: str, name: str) -> int:
    found = re.search(rf'<span class="stat {name}">(\d+)</span>', page)
    assert found is not None, name
    return int(found.group(1))


async def test_an_admin_sees_every_worker_its_heartbeat_and_the_queue(site: WebApp) -> None:
    await seed_workers(site)
    admin = await site.signed_in("acme", "admin")
    page = (await admin.get("/system")).text
    rows = worker_rows(page)
    assert set(rows) == {"w-fresh", "w-stale"}
    assert re.fullmatch(r"w-fresh host-a 4242 \ds ago 2", rows["w-fresh"]), rows["w-fresh"]
    assert re.fullmatch(r"w-stale host-b 5151 10m ago stale 1", rows["w-stale"]), rows
    assert '<tr class="worker stale">' in page
    assert stat(page, "queue-depth") == 3
    assert stat(page, "tenant-queued") == 1
    assert stat(page, "tenant-running") == 2
    assert "none (API only)" in page


async def test_another_tenants_admin_sees_only_its_tenants_part(site: WebApp) -> None:
    await seed_workers(site)
    globex = await site.signed_in("globex", "admin")
    page = (await globex.get("/system")).text
    assert worker_rows(page) == {}
    for hidden in ("w-fresh", "w-stale", "host-a", "queue-depth", "Executor id"):
        assert hidden not in page
    assert stat(page, "tenant-queued") == 2


@pytest.mark.parametrize("role", ["viewer", "operator"])
async def test_viewers_and_operators_see_only_their_tenants_part(site: WebApp, role: str) -> None:
    await seed_workers(site)
    client = await site.signed_in("acme", role)
    page = (await client.get("/system")).text
    assert worker_rows(page) == {}
    for hidden in ("w-fresh", "w-stale", "host-a", "4242", "queue-depth", "Executor id"):
        assert hidden not in page
    assert stat(page, "tenant-running") == 2
    assert stat(page, "tenant-queued") == 1

    globex = await site.signed_in("globex", role)
    other = (await globex.get("/system")).text
    assert stat(other, "tenant-running") == 1
    assert stat(other, "tenant-queued") == 2


async def test_deliveries_are_the_tenants_own_newest_first_and_escaped(site: WebApp) -> None:
    engine = site.services.engine.store.engine
    acme = DeliveryStore(engine, tenant="acme")
    await acme.claim("github", "d-old", event="push")
    await acme.finish("github", "d-old", outcome="started", run_ids=["run-from-hook"])
    await asyncio.sleep(0.01)
    await acme.claim("github", "d-new", event="<img src=x onerror=alert(1)>")
    await acme.finish("github", "d-new", outcome="error", run_ids=[])
    await DeliveryStore(engine, tenant="globex").claim("github", "d-globex", event="push")

    viewer = await site.signed_in("acme", "viewer")
    page = (await viewer.get("/system")).text
    deliveries = re.findall(r'<tr class="delivery">(.*?)</tr>', page, re.DOTALL)
    assert [text_of(row).split()[:2] for row in deliveries] == [
        ["github", "d-new"],
        ["github", "d-old"],
    ]
    assert "d-globex" not in page
    assert "<img src=x" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert 'href="/runs/run-from-hook"' in deliveries[1]
    assert "started" in deliveries[1]
    assert "error" in deliveries[0]

    globex = await site.signed_in("globex", "viewer")
    other = (await globex.get("/system")).text
    assert "d-globex" in other
    assert "d-new" not in other


async def test_version_schema_and_database_are_shown(site: WebApp) -> None:
    dialect = site.services.engine.store.engine.dialect.name
    for role in ("viewer", "admin"):
        client = await site.signed_in("acme", role)
        text = text_of((await client.get("/system")).text)
        assert f"agentmill {__version__}" in text
        assert f"Schema revision {SCHEMA_REVISION}" in text
        assert f"Database {dialect}" in text
        assert "Heartbeat interval 20.0s" in text


@pytest.mark.postgres
async def test_the_database_password_is_never_shown(fresh_pg_url: str, tmp_path: Path) -> None:
    url = fresh_pg_url.replace("postgresql://postgres@", "postgresql://postgres:s3cret-pw@")
    assert "s3cret-pw" in url  # trust authentication: any password opens the database
    settings = Settings(home=tmp_path / ".agentmill", database_url=url, metrics_tenant="acme")
    async with dashboard_app(settings, PROJECT, workers=0) as site:
        for role in ("viewer", "admin"):
            client = await site.signed_in("acme", role)
            page = await client.get("/system")
            assert page.status_code == 200
            assert "s3cret-pw" not in page.text
            fragment = await client.get("/system?fragment=live")
            assert "s3cret-pw" not in fragment.text
        shown = re.search(r'<code class="database-url">(.*?)</code>', page.text)
        assert shown is not None
        assert html.unescape(shown.group(1)).startswith("postgresql+psycopg://postgres:***@")


async def test_a_running_runs_worker_and_heartbeat_are_shown_to_admins(
    isolated_settings: Settings,
) -> None:
    settings = isolated_settings.model_copy(
        update={"heartbeat_interval": 5.0, "metrics_tenant": "acme"}
    )
    async with dashboard_app(settings, PROJECT, workers=4) as site:
        response = await (await site.signed_in("acme", "operator")).get("/system")
        assert worker_rows(response.text) == {}
        secret = site.keys[("acme", "operator")]
        started = await site.client().post(
            "/v1/runs",
            json={"workflow": "gated", "inputs": {}},
            headers={"Authorization": f"Bearer {secret}"},
        )
        run_id = started.json()["id"]
        store = site.services.engine.store
        for _ in range(300):
            run = await store.get_run(run_id, tenant="acme")
            if run.owner is not None and run.heartbeat_at is not None:
                break
            await asyncio.sleep(0.05)
        me = site.services.engine.owner
        admin = await site.signed_in("acme", "admin")
        rows = worker_rows((await admin.get("/system")).text)
        expected = rf"{re.escape(me.executor_id)} {re.escape(me.host)} {me.pid} \d+s ago 1"
        assert re.fullmatch(expected, rows[me.executor_id])
        viewer = await site.signed_in("acme", "viewer")
        page = (await viewer.get("/system?fragment=live")).text
        assert me.executor_id not in page
        assert stat(page, "tenant-running") == 1
        await site.services.engine.cancel(run_id, tenant="acme")
