"""`agentmill approvals list`: what waits for a person — gate steps and tool calls — with
the id to give `agentmill approve` (a tool call's is `<step key>#<call id>`)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

from agentmill.cli.exits import EXIT_OK, err, out, run_command
from agentmill.errors import UserError

if TYPE_CHECKING:
    from agentmill.store.approvals import ApprovalRecord, ApprovalStatus

__all__ = ["app"]

app = typer.Typer(
    help="See what waits for a person's approval.", no_args_is_help=True, rich_markup_mode=None
)

_ALL = "all"


@app.command("list")
def list_approvals(
    run: Annotated[str | None, typer.Option("--run", help="Only this run's approvals")] = None,
    status: Annotated[
        str,
        typer.Option(help="pending, approved, rejected, expired, or all"),
    ] = "pending",
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List approvals (pending ones by default), newest first: gate steps and tool calls."""
    run_command(lambda: _list(run, status, as_json))


async def _list(run_id: str | None, status: str, as_json: bool) -> int:
    from agentmill.cli.client import open_client
    from agentmill.settings import Settings

    wanted = _parse_status(status)
    async with open_client(Settings(), workers=False) as client:
        found = await client.approvals(status=wanted, run_id=run_id)
    if as_json:
        out().print_json(json.dumps([_to_json(a) for a in found]))
    else:
        _print_table(found)
    return EXIT_OK


def _print_table(found: list[ApprovalRecord]) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table("run", "gate", "status", "asks", "until", box=None)
    for approval in found:
        table.add_row(
            approval.run_id,
            escape(approval.step_id),
            str(approval.status),
            escape(_first_line(approval.prompt)),
            datetime.fromtimestamp(approval.expires_at).strftime("%Y-%m-%d %H:%M"),
        )
    out().print(table)
    if any(a.is_tool_call and str(a.status) == "pending" for a in found):
        err().print(
            "decide: agentmill approve RUN GATE [--reject] [--comment TEXT] [--args JSON]",
            soft_wrap=True,
        )


def _to_json(approval: ApprovalRecord) -> dict[str, Any]:
    data = dict(approval.__dict__)
    data["status"] = str(approval.status)
    data.pop("tenant", None)
    return data


def _parse_status(text: str) -> ApprovalStatus | None:
    from agentmill.store.approvals import ApprovalStatus

    if text == _ALL:
        return None
    try:
        return ApprovalStatus(text)
    except ValueError:
        choices = ", ".join([*(str(s) for s in ApprovalStatus), _ALL])
        raise UserError(f"unknown approval status {text!r}: use one of {choices}") from None


def _first_line(text: str, limit: int = 80) -> str:
    line = text.splitlines()[0] if text else ""
    return line[:limit] + ("…" if len(line) > limit or "\n" in text else "")
