"""Running a command body and turning its outcome into a message and an exit code."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from agentmill.errors import AgentmillError, ControlFlow, RunFailure, UserError

__all__ = ["EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "err", "run_command"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

err = Console(stderr=True, highlight=False)

Body = Callable[[], Coroutine[Any, Any, int] | int | None]


def run_command(body: Body) -> None:
    """Run a command body (sync or async); exit with its code or the error's."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = body()
        if asyncio.iscoroutine(result):
            result = asyncio.run(result)
    except UserError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(EXIT_USAGE) from None
    except RunFailure as exc:
        err.print(f"[bold red]failed:[/] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(EXIT_FAILED) from None
    except ControlFlow as exc:
        err.print(f"[yellow]{escape(str(exc))}[/]", soft_wrap=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except AgentmillError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(EXIT_FAILED) from None
    raise typer.Exit(result or EXIT_OK)
