"""`agentmill costs [--by workflow|tenant] [--since 30d]`: what runs spent."""

from __future__ import annotations

import json
import time
from typing import Literal

from agentmill.cli.exits import EXIT_OK, out

__all__ = ["show_costs"]


async def show_costs(
    group_by: Literal["workflow", "tenant"],
    since: str | None,
    tenant: str | None,
    as_json: bool,
) -> int:
    """A table (or JSON) of spend per workflow or tenant, most expensive first."""
    from rich.markup import escape
    from rich.table import Table

    from agentmill.cli.client import open_client
    from agentmill.settings import Settings

    start = _since(since)
    async with open_client(Settings(), workers=False) as client:
        totals = await client.costs(group_by=group_by, since=start, tenant=tenant)
    if as_json:
        items = [total.to_json() for total in totals]
        out().print_json(json.dumps({"group_by": group_by, "since": start, "items": items}))
        return EXIT_OK
    if not totals:
        out().print("no model calls recorded" + (f" since {since} ago" if since else ""))
        return EXIT_OK
    table = Table(group_by, "cost", "calls", box=None)
    for total in totals:
        table.add_row(escape(total.group or ""), total.describe(), str(total.calls))
    out().print(table)
    return EXIT_OK


def _since(value: str | None) -> float | None:
    """`30d` -> the epoch time 30 days ago."""
    if value is None:
        return None
    from agentmill.errors import InputError
    from agentmill.spec.durations import parse_duration

    try:
        return time.time() - parse_duration(value)
    except ValueError as exc:
        raise InputError(f"--since: {exc}") from None
