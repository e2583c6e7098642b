"""`agentmill approve RUN STEP [--reject] [--comment TEXT]`: decide a waiting approval gate."""

from __future__ import annotations

from agentmill.cli.exits import EXIT_OK, out

__all__ = ["cli_user", "decide_approval"]


async def decide_approval(run_id: str, step: str, approve: bool, comment: str | None) -> int:
    """Record the decision (once) and wake the run; print one line."""
    from rich.markup import escape

    from agentmill.cli.client import open_client
    from agentmill.settings import Settings

    # Workers: DBOS is launched so the decision can wake the waiting run at once.
    async with open_client(Settings(), workers=True) as client:
        record = await client.decide(run_id, step, approve=approve, comment=comment, by=cli_user())
    out().print(
        f"run {record.run_id}: step {escape(record.step_id)} {record.status} "
        f"by {escape(record.decided_by or '')}"
    )
    return EXIT_OK


def cli_user() -> str:
    """Who decides from this terminal: `cli:<login name>` (recorded as `decided_by`)."""
    import os

    try:
        import pwd

        name = pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError, AttributeError):
        name = "unknown"
    return f"cli:{name}"
