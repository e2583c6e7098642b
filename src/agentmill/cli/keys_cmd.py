"""`agentmill keys create | list | revoke`: API keys for the server, in the database."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator
from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import typer

from agentmill.cli.exits import EXIT_OK, err, out, run_command

if TYPE_CHECKING:
    from agentmill.store.keys import KeyStore, Role

__all__ = ["app"]

app = typer.Typer(
    help="Manage API keys for `agentmill serve` (run where the database is reachable).",
    no_args_is_help=True,
    rich_markup_mode=None,
)


@app.command()
def create(
    tenant: Annotated[str, typer.Option(help="Tenant the key acts for")] = "default",
    role: Annotated[str, typer.Option(help="viewer, operator or admin")] = "operator",
    name: Annotated[str, typer.Option(help="A label to recognise the key by")] = "",
) -> None:
    """Create a key; its secret is printed once, on stdout."""
    run_command(lambda: _create(tenant, role, name))


@app.command("list")
def list_keys(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's keys")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List keys (ids, tenants, roles; never secrets)."""
    run_command(lambda: _list(tenant, as_json))


@app.command()
def revoke(key_id: Annotated[str, typer.Argument(help="Key id (see `keys list`)")]) -> None:
    """Revoke a key; requests with it fail from now on."""
    run_command(lambda: _revoke(key_id))


async def _create(tenant: str, role: str, name: str) -> int:
    async with _key_store() as keys:
        key, secret = await keys.create(tenant=tenant, role=_role(role), name=name)
    err().print(f"created key {key.id} (tenant {key.tenant}, role {key.role}); "
                "store the secret now, it is not shown again:")  # fmt: skip
    out().print(secret, soft_wrap=True)
    return EXIT_OK


async def _list(tenant: str | None, as_json: bool) -> int:
    from rich.markup import escape
    from rich.table import Table

    async with _key_store() as keys:
        found = await keys.list(tenant=tenant)
    if as_json:
        rows = [{**key.__dict__, "role": str(key.role)} for key in found]
        out().print_json(json.dumps(rows))
        return EXIT_OK
    table = Table("id", "tenant", "role", "name", "created", "state", box=None)
    for key in found:
        state = "revoked" if key.revoked_at else "active"
        table.add_row(
            key.id,
            escape(key.tenant),
            str(key.role),
            escape(key.name),
            _when(key.created_at),
            state,
        )
    out().print(table if found else "no keys yet: agentmill keys create --tenant T --role admin")
    return EXIT_OK


async def _revoke(key_id: str) -> int:
    async with _key_store() as keys:
        key = await keys.revoke(key_id)
    err().print(f"revoked key {key.id} (tenant {key.tenant})")
    return EXIT_OK


def _role(value: str) -> Role:
    from agentmill.errors import InputError
    from agentmill.store.keys import Role

    try:
        return Role(value)
    except ValueError:
        raise InputError(f"unknown role {value!r}: use viewer, operator or admin") from None


@contextlib.asynccontextmanager
async def _key_store() -> AsyncGenerator[KeyStore]:
    from agentmill.settings import Settings
    from agentmill.store import Store
    from agentmill.store.keys import KeyStore

    store = await Store.open(Settings().resolved_database_url)
    try:
        yield KeyStore(store.engine)
    finally:
        await store.close()


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")
