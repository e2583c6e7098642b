"""The runs page: the tenant's runs newest first, filters, pages, live rows, costs."""

from __future__ import annotations

import asyncio
import re

import httpx

from agentmill.store import RunStatus
from tests.web.web_client import Web

_ROW = re.compile(r'data-run="([0-9a-f]+)"')


def run_ids(html: str) -> list[str]:
    return _ROW.findall(html)


async def finished(web: Web, run_id: str) -> None:
    async with asyncio.timeout(30):
        await web.services.engine.wait(run_id)


async def test_runs_are_listed_newest_first_for_the_signed_in_tenant_only(web: Web) -> None:
    first = await web.start("echo", {"topic": "one"})
    second = await web.start("echo", {"topic": "two"})
    other = await web.start("echo", {"topic": "theirs"}, tenant="globex")
    for run_id in (first, second, other):
        await finished(web, run_id)
    acme = await web.signed_in("acme", "viewer")
    assert run_ids((await acme.get("/")).text) == [second, first]
    globex = await web.signed_in("globex", "viewer")
    assert run_ids((await globex.get("/")).text) == [other]


async def test_filters_by_workflow_status_trigger_and_date(web: Web) -> None:
    echo = await web.start("echo", {"topic": "x"})
    gated = await web.start("gated", {})
    await finished(web, echo)
    client = await web.signed_in()
    assert run_ids((await client.get("/?workflow=echo")).text) == [echo]
    assert run_ids((await client.get("/?workflow=gated")).text) == [gated]
    assert run_ids((await client.get("/?status=succeeded")).text) == [echo]
    assert run_ids((await client.get("/?trigger=cli")).text) == [gated, echo]
    assert run_ids((await client.get("/?trigger=github")).text) == []
    assert run_ids((await client.get("/?since=2000-01-01&until=2100-01-01")).text) == [gated, echo]
    assert run_ids((await client.get("/?until=2000-01-01")).text) == []
    page = (await client.get("/?workflow=echo&status=succeeded")).text
    assert '<option value="echo" selected>' in page
    assert '<option value="succeeded" selected>' in page


async def test_bad_filter_values_get_a_page_saying_so(web: Web) -> None:
    client = await web.signed_in()
    for query in ("status=exploded", "since=yesterday", "cursor=garbage"):
        response = await client.get(f"/?{query}")
        assert response.status_code == 422, query
        assert response.headers["content-type"].startswith("text/html")
    markup = await client.get("/?workflow=%3Cscript%3Ealert(1)%3C/script%3E")
    assert markup.status_code == 200
    assert "<script>alert(1)" not in markup.text
    assert "&lt;script&gt;alert(1)" in markup.text


async def test_pages_of_fifty_follow_each_other_without_gaps(web: Web) -> None:
    await seed_runs(web, 120)
    client = await web.signed_in()
    seen: list[str] = []
    url = "/"
    while True:
        html = (await client.get(url)).text
        seen += run_ids(html)
        found = re.search(r'rel="next" href="([^"]+)"', html)
        if found is None:
            break
        url = found.group(1).replace("&amp;", "&")
    assert len(seen) == 120
    assert len(set(seen)) == 120


async def seed_runs(web: Web, count: int) -> None:
    store = web.services.engine.store
    existing = await store.list_runs(tenant="acme", limit=1)
    assert not existing
    template = await web.start("echo", {"topic": "seed"})
    await finished(web, template)
    record = await store.get_run(template, tenant="acme")
    from dataclasses import replace

    for number in range(count - 1):
        copy = replace(record, id=f"{number:020x}", created_at=record.created_at - number - 1)
        await store.create_run(copy)


async def test_the_first_page_polls_for_new_rows_and_later_pages_do_not(web: Web) -> None:
    await seed_runs(web, 60)
    client = await web.signed_in()
    first = (await client.get("/?status=succeeded")).text
    assert 'hx-get="/?status=succeeded&amp;fragment=rows"' in first
    assert 'hx-trigger="every 2s"' in first
    found = re.search(r'rel="next" href="([^"]+)"', first)
    assert found is not None
    later = (await client.get(found.group(1).replace("&amp;", "&"))).text
    assert "hx-trigger" not in later


async def test_the_rows_fragment_shows_a_run_started_elsewhere(web: Web) -> None:
    client = await web.signed_in()
    before = await client.get("/?fragment=rows")
    assert run_ids(before.text) == []
    assert before.text.lstrip().startswith("<tbody")
    run_id = await web.start("echo", {"topic": "from another terminal"})
    after = await client.get("/?fragment=rows")
    assert run_ids(after.text) == [run_id]
    assert "<html" not in after.text


async def test_status_and_cost_follow_the_run(web: Web) -> None:
    web.model.latency = 0.3
    run_id = await web.start("echo", {"topic": "slow"})
    client = await web.signed_in()
    running = await row_of(client, run_id)
    assert "status-pending" in running or "status-running" in running
    await finished(web, run_id)
    done = await row_of(client, run_id)
    assert f"status-{RunStatus.SUCCEEDED}" in done
    cost = re.search(r'<td class="cost">([^<]*)</td>', done)
    assert cost is not None
    assert cost.group(1).strip()  # priced or "unknown", never left blank once calls ran


async def row_of(client: httpx.AsyncClient, run_id: str) -> str:
    html = (await client.get("/?fragment=rows")).text
    start = html.index(f'data-run="{run_id}"')
    return html[start : html.index("</tr>", start)]
