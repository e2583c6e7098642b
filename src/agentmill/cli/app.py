"""The `agentmill` command line: Typer app, exit codes, and user-error reporting.

Exit codes: 0 success, 1 run failed, 2 usage or config error, 130 interrupted.
Heavy modules are imported inside the commands so `agentmill --help` stays fast.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from agentmill.cli import approvals_cmd, cache_cmd, keys_cmd, runs_cmd
from agentmill.cli.exits import EXIT_USAGE, run_command

__all__ = ["app", "main"]

app = typer.Typer(
    name="agentmill",
    help="Durable workflows for teams of LLM agents and command-line coding agents.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
app.add_typer(runs_cmd.app, name="runs")
app.add_typer(keys_cmd.app, name="keys")
app.add_typer(cache_cmd.app, name="cache")
app.add_typer(approvals_cmd.app, name="approvals")


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="Where to create the project")] = Path("."),
) -> None:
    """Create a project with a working example workflow."""
    from agentmill.cli.init_cmd import init_project

    run_command(lambda: init_project(directory))


@app.command()
def validate(
    file: Annotated[Path, typer.Argument(help="Config file to check")],
) -> None:
    """Check a config file and report every problem with file:line."""
    from agentmill.cli.run_cmd import validate_file

    run_command(lambda: validate_file(file))


@app.command()
def run(
    file: Annotated[Path, typer.Argument(help="Config file (not read in remote mode, see below)")],
    workflow: Annotated[str, typer.Argument(help="Workflow to run")],
    inputs: Annotated[
        list[str] | None,
        typer.Option("--input", "-i", help="name=value, or name=@file to read a file"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON result only")] = False,
    budget_usd: Annotated[
        float | None,
        typer.Option(help="Budget of this run in US dollars (replaces the workflow's)"),
    ] = None,
    budget_tokens: Annotated[
        int | None,
        typer.Option(help="Budget of this run in tokens, input + output (replaces the workflow's)"),
    ] = None,
) -> None:
    """Run a workflow, showing its steps and streamed output live.

    With AGENTMILL_URL and AGENTMILL_API_KEY set, the server runs its own workflow of that
    name: FILE is neither read nor sent, only the workflow name and the inputs are.
    """
    from agentmill.cli.run_cmd import run_workflow

    run_command(
        lambda: run_workflow(
            file,
            workflow,
            inputs or [],
            as_json=as_json,
            budget_usd=budget_usd,
            budget_tokens=budget_tokens,
        )
    )


@app.command()
def serve(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Config file with workflows and triggers")
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8080,
    workers: Annotated[
        int, typer.Option(min=0, help="Runs this process executes at once; 0 = API only")
    ] = 16,
) -> None:
    """Serve the HTTP API (and execute runs) until SIGTERM or Ctrl-C."""
    from agentmill.cli.serve_cmd import serve as serve_api

    run_command(lambda: serve_api(config, host, port, workers))


@app.command()
def ui(
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="Config file (default: ./agentmill.yaml if present)"),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
    port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="Port (default 8790, or any free one)")
    ] = None,
    open_browser: Annotated[
        bool, typer.Option("--open/--no-open", help="Open the sign-in link in a browser")
    ] = True,
) -> None:
    """Serve the dashboard over the local store, with a one-time sign-in link."""
    from agentmill.cli.ui_cmd import serve_ui

    run_command(lambda: serve_ui(config, host, port, open_browser))


@app.command()
def mcp(
    file: Annotated[Path, typer.Argument(help="Config file whose workflows to serve")] = Path(
        "agentmill.yaml"
    ),
) -> None:
    """Serve the workflows as MCP tools over stdio (for Claude Code, Cursor, ...).

    Each tool runs one workflow in this process and answers with its outputs; stdout
    carries only the protocol, logs go to stderr.
    """
    from agentmill.cli.mcp_cmd import serve_mcp

    run_command(lambda: serve_mcp(file))


@app.command()
def approve(
    run_id: Annotated[str, typer.Argument(help="Run id (see `agentmill runs list`)")],
    step: Annotated[
        str,
        typer.Argument(
            help="The approval step the run waits at, or a tool call's gate `STEP#CALL`"
        ),
    ],
    reject: Annotated[bool, typer.Option("--reject", help="Reject instead of approving")] = False,
    comment: Annotated[
        str | None,
        typer.Option(
            "--comment",
            "-m",
            help="A note recorded with the decision (a rejected tool call's model reads it)",
        ),
    ] = None,
    args: Annotated[
        str | None,
        typer.Option(
            "--args", help="A tool call: approve it with these arguments instead (a JSON object)"
        ),
    ] = None,
) -> None:
    """Approve (or --reject) a run waiting at an approval step or tool call; recorded once."""
    from agentmill.cli.approve_cmd import decide_approval

    run_command(lambda: decide_approval(run_id, step, not reject, comment, args))


@app.command()
def costs(
    by: Annotated[str, typer.Option("--by", help="Group by `workflow` or `tenant`")] = "workflow",
    since: Annotated[
        str | None, typer.Option("--since", help="Only calls in this window, e.g. 24h, 30d")
    ] = None,
    tenant: Annotated[
        str | None, typer.Option("--tenant", help="Only this tenant (local database)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Show what model calls cost, per workflow or per tenant (unknown prices never as $0)."""
    from agentmill.cli.costs_cmd import show_costs

    if by not in {"workflow", "tenant"}:
        typer.echo(f"--by must be workflow or tenant, got {by!r}", err=True)
        raise typer.Exit(EXIT_USAGE)
    group = "tenant" if by == "tenant" else "workflow"
    run_command(lambda: show_costs(group, since, tenant, as_json))


@app.command()
def doctor(
    file: Annotated[
        Path | None,
        typer.Argument(
            help="Config file whose command-line agents, agent tools and MCP servers to check too"
        ),
    ] = None,
) -> None:
    """Check the database, extras, API keys, the local model, command-line tools and MCP servers."""
    from agentmill.cli.doctor import run_doctor

    run_command(lambda: run_doctor(file))


def main() -> None:
    """Entry point of the `agentmill` script."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main() or EXIT_USAGE)
