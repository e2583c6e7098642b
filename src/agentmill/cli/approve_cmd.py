"""`agentmill approve RUN GATE [--reject] [--comment TEXT] [--args JSON]`: decide a waiting
approval gate, or a tool call waiting for approval (`<step key>#<call id>`)."""

from __future__ import annotations

from typing import Any

from agentmill.cli.exits import EXIT_OK, out
from agentmill.errors import UserError

__all__ = ["cli_user", "decide_approval", "edited_arguments"]


async def decide_approval(
    run_id: str, step: str, approve: bool, comment: str | None, args: str | None = None
) -> int:
    """Record the decision (once) and wake the run; print one line."""
    from rich.markup import escape

    from agentmill.cli.client import open_client
    from agentmill.settings import Settings

    arguments = edited_arguments(args)
    # Workers: DBOS is launched so the decision can wake the waiting run at once.
    async with open_client(Settings(), workers=True) as client:
        record = await client.decide(
            run_id, step, approve=approve, comment=comment, by=cli_user(), arguments=arguments
        )
    edited = " with edited arguments" if record.edited_arguments is not None else ""
    out().print(
        f"run {record.run_id}: step {escape(record.step_id)} {record.status}{edited} "
        f"by {escape(record.decided_by or '')}"
    )
    return EXIT_OK


def edited_arguments(text: str | None) -> dict[str, Any] | None:
    """`--args`: the tool call's new arguments, a JSON object (checked before anything runs)."""
    import json

    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(
            f"--args is not valid JSON ({exc.msg} at column {exc.colno}): give an object, "
            """e.g. --args '{"path": "notes.md"}'"""
        ) from None
    if not isinstance(value, dict):
        raise UserError(
            f"--args must be a JSON object of argument names and values, got "
            f'{type(value).__name__}: e.g. --args \'{{"path": "notes.md"}}\''
        )
    return value  # pyright: ignore[reportUnknownVariableType]


def cli_user() -> str:
    """Who decides from this terminal: `cli:<login name>` (recorded as `decided_by`)."""
    import os

    try:
        import pwd

        name = pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError, AttributeError):
        name = "unknown"
    return f"cli:{name}"
