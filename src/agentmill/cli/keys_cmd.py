"""`agentmill keys create | list | budget | revoke`: API keys for the server, in the database."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

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


_DailyUsd = Annotated[
    float | None, typer.Option(help="US dollars the key's runs may spend per UTC day")
]
_MonthlyUsd = Annotated[
    float | None, typer.Option(help="US dollars the key's runs may spend per UTC month")
]
_DailyTokens = Annotated[int | None, typer.Option(help="Tokens (input + output) per UTC day")]
_MonthlyTokens = Annotated[int | None, typer.Option(help="Tokens (input + output) per UTC month")]


@app.command()
def create(
    tenant: Annotated[str, typer.Option(help="Tenant the key acts for")] = "default",
    role: Annotated[str, typer.Option(help="viewer, operator or admin")] = "operator",
    name: Annotated[str, typer.Option(help="A label to recognise the key by")] = "",
    daily_usd: _DailyUsd = None,
    monthly_usd: _MonthlyUsd = None,
    daily_tokens: _DailyTokens = None,
    monthly_tokens: _MonthlyTokens = None,
) -> None:
    """Create a key; its secret is printed once, on stdout. The budget options limit
    what the runs it starts may spend (see docs/budgets.md)."""
    limits = (daily_usd, monthly_usd, daily_tokens, monthly_tokens)
    run_command(lambda: _create(tenant, role, name, _key_budget(*limits)))


@app.command()
def budget(
    key_id: Annotated[str, typer.Argument(help="Key id (see `keys list`)")],
    daily_usd: _DailyUsd = None,
    monthly_usd: _MonthlyUsd = None,
    daily_tokens: _DailyTokens = None,
    monthly_tokens: _MonthlyTokens = None,
) -> None:
    """Replace a key's daily and monthly budget (no options: remove it)."""
    limits = (daily_usd, monthly_usd, daily_tokens, monthly_tokens)
    run_command(lambda: _set_budget(key_id, _key_budget(*limits)))


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


async def _create(tenant: str, role: str, name: str, budget: dict[str, Any] | None) -> int:
    async with _key_store() as keys:
        key, secret = await keys.create(tenant=tenant, role=_role(role), name=name, budget=budget)
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
    table = Table("id", "tenant", "role", "name", "created", "state", "budget", box=None)
    for key in found:
        state = "revoked" if key.revoked_at else "active"
        table.add_row(
            key.id,
            escape(key.tenant),
            str(key.role),
            escape(key.name),
            _when(key.created_at),
            state,
            _describe_budget(key.budget),
        )
    out().print(table if found else "no keys yet: agentmill keys create --tenant T --role admin")
    return EXIT_OK


async def _revoke(key_id: str) -> int:
    async with _key_store() as keys:
        key = await keys.revoke(key_id)
    err().print(f"revoked key {key.id} (tenant {key.tenant})")
    return EXIT_OK


async def _set_budget(key_id: str, budget: dict[str, Any] | None) -> int:
    async with _key_store() as keys:
        key = await keys.set_budget(key_id, budget)
    err().print(f"key {key.id}: budget {_describe_budget(key.budget)}")
    return EXIT_OK


def _key_budget(
    daily_usd: float | None,
    monthly_usd: float | None,
    daily_tokens: int | None,
    monthly_tokens: int | None,
) -> dict[str, Any] | None:
    """The stored form of a key's budget: `{"day": {...}, "month": {...}}`, or None."""
    from agentmill.errors import InputError

    budget: dict[str, Any] = {}
    for period, usd, tokens in (
        ("day", daily_usd, daily_tokens),
        ("month", monthly_usd, monthly_tokens),
    ):
        limits = {k: v for k, v in (("usd", usd), ("tokens", tokens)) if v is not None}
        if limits:
            budget[period] = limits
    from pydantic import ValidationError

    from agentmill.spec.models import MAX_BUDGET_TOKENS, PeriodBudgets

    try:
        PeriodBudgets.model_validate(budget)
    except ValidationError:
        raise InputError(
            "a budget limit must be a number more than 0 (tokens: a whole number up to "
            f"{MAX_BUDGET_TOKENS:_}); omit the option for no limit"
        ) from None
    return budget or None


def _describe_budget(budget: dict[str, Any] | None) -> str:
    if not budget:
        return "none"
    parts: list[str] = []
    for period, label in (("day", "daily"), ("month", "monthly")):
        limits = budget.get(period) or {}
        if "usd" in limits:
            parts.append(f"${limits['usd']:g} {label}")
        if "tokens" in limits:
            parts.append(f"{limits['tokens']:,} tokens {label}")
    return ", ".join(parts)


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
