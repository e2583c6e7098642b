"""Running a command body and turning its outcome into a message and an exit code."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import click
import typer

from agentmill.errors import AgentmillError, RunFailure, UserError, shown_error

if TYPE_CHECKING:
    from rich.console import Console

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "err",
    "out",
    "run_command",
]

logger = logging.getLogger("agentmill.cli")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


@functools.cache
def err() -> Console:
    """The stderr console (created on first use: rich is slow to import).

    Like `out()`, it never breaks a line of text (`soft_wrap`): commands in hints stay
    whole when copied, and piped output is not cut at 80 columns. Tables still fit the
    width; a terminal wraps long lines on screen only.
    """
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


@functools.cache
def out() -> Console:
    """The stdout console (text never broken, as on `err()`)."""
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


Body = Callable[[], Coroutine[Any, Any, int] | int | None]


def run_command(body: Body) -> None:
    """Run a command body (sync or async); exit with its code or the error's."""
    import asyncio

    from rich.markup import escape

    from agentmill.logs import configure_logging
    from agentmill.settings import Settings, secret_values

    try:
        settings = Settings()  # invalid AGENTMILL_* values are a UserError, reported below
        configure_logging(
            settings.log_level, as_json=settings.log_json, secrets=secret_values(settings)
        )
        result = body()
        if asyncio.iscoroutine(result):
            result = asyncio.run(result)
    except UserError as exc:
        err().print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(EXIT_USAGE) from None
    except RunFailure as exc:
        err().print(f"[bold red]failed:[/] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(EXIT_FAILED) from None
    except KeyboardInterrupt:
        err().print("[yellow]interrupted[/]")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except AgentmillError as exc:
        err().print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(EXIT_FAILED) from None
    except (typer.Exit, typer.Abort, click.ClickException):
        raise  # Typer's own ways out of a command
    except Exception as exc:  # noqa: BLE001 - logged with an id by shown_error
        # A bug or an unexpected database error: its text (SQL, parameters) goes to the
        # log with an id; the last line is the short message.
        shown = shown_error(exc, log=logger, doing="the command", where="agentmill")
        err().print(f"[bold red]error:[/] {escape(str(shown))}", soft_wrap=True)
        raise typer.Exit(EXIT_FAILED) from None
    raise typer.Exit(result or EXIT_OK)
