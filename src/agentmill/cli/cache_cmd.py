"""`agentmill cache stats | clear`: the response cache in the local database."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Annotated

import typer

from agentmill.cli.exits import EXIT_OK, err, out, run_command

if TYPE_CHECKING:
    from agentmill.store import Store
    from agentmill.store.cache import TenantCacheStats

__all__ = ["app"]

app = typer.Typer(
    help="Inspect or empty the response cache (run where the database is reachable).",
    no_args_is_help=True,
    rich_markup_mode=None,
)


@app.command()
def stats(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Hits, misses, evictions, integrity failures and size, per tenant."""
    run_command(lambda: _stats(tenant, as_json))


@app.command()
def clear(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's entries")] = None,
    expired_only: Annotated[
        bool, typer.Option("--expired-only", help="Only entries past their TTL")
    ] = False,
) -> None:
    """Delete cache entries (every tenant's unless --tenant); counters are kept."""
    run_command(lambda: _clear(tenant, expired_only))


async def _stats(tenant: str | None, as_json: bool) -> int:
    from agentmill.store.cache import read_stats

    async with _store() as store:
        found = await read_stats(store.engine, tenant=tenant)
    if as_json:
        out().print_json(json.dumps([entry.to_json() for entry in found]))
        return EXIT_OK
    if not found:
        whose = f"tenant {tenant!r}" if tenant else "any tenant"
        out().print(
            f"no cache activity for {whose} yet: enable it per agent with `cache: {{ttl: 1h}}`"
        )
        return EXIT_OK
    out().print(_table(found))
    return EXIT_OK


def _table(found: list[TenantCacheStats]) -> object:
    from rich.markup import escape
    from rich.table import Table

    columns = ("tenant", "hits", "misses", "hit %", "sets", "evicted", "expired", "tampered",
               "entries", "size")  # fmt: skip
    table = Table(*columns, box=None)
    for entry in found:
        counts = entry.counts
        rate = f"{counts.hits / counts.lookups:.0%}" if counts.lookups else "-"
        table.add_row(
            escape(entry.tenant),
            f"{counts.hits:,}",
            f"{counts.misses:,}",
            rate,
            f"{counts.sets:,}",
            f"{counts.evictions:,}",
            f"{counts.expirations:,}",
            f"{counts.integrity_failures:,}",
            f"{entry.entries:,}",
            _size(entry.bytes),
        )
    return table


async def _clear(tenant: str | None, expired_only: bool) -> int:
    from agentmill.store.cache import clear_entries

    async with _store() as store:
        entries, size = await clear_entries(store.engine, tenant=tenant, expired_only=expired_only)
    which = "expired entries" if expired_only else "entries"
    whose = f" of tenant {tenant!r}" if tenant else ""
    err().print(f"removed {entries:,} {which}{whose} ({_size(size)})")
    return EXIT_OK


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024 or unit == "MiB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


@contextlib.asynccontextmanager
async def _store() -> AsyncGenerator[Store]:
    from agentmill.settings import Settings
    from agentmill.store import Store

    store = await Store.open(Settings().resolved_database_url)
    try:
        yield store
    finally:
        await store.close()
