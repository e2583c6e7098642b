"""`agentmill validate`, `agentmill run` and the shared follow-and-report of a run."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Coroutine, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from rich.markup import escape

from agentmill.cli.client import RunsClient, RunSource, open_client, read_source
from agentmill.cli.exits import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, err, out
from agentmill.cli.live import ProgressView
from agentmill.cli.report import print_outputs, run_to_json
from agentmill.engine.project import load_checked
from agentmill.errors import InputError
from agentmill.policy.guard import DEFAULT_MAX_PROMPT_CHARS
from agentmill.settings import Settings
from agentmill.spec.files import FileTooLarge, read_text_at_most
from agentmill.spec.models import MAX_BUDGET_TOKENS, BudgetSpec
from agentmill.store import RunRecord, RunStatus, run_cost

if TYPE_CHECKING:
    from rich.console import Console

__all__ = [
    "follow_run",
    "input_file_limit",
    "parse_inputs",
    "run_budget",
    "run_workflow",
    "validate_file",
]


def validate_file(path: Path) -> int:
    loaded = load_checked(path)
    spec = loaded.spec
    out().print(
        f"[green]ok[/] {escape(str(path))}: {len(spec.workflows)} workflow(s), "
        f"{len(spec.agents)} agent(s)"
    )
    return EXIT_OK


def parse_inputs(
    pairs: Iterable[str], *, max_chars: int = DEFAULT_MAX_PROMPT_CHARS
) -> dict[str, str]:
    """`name=value` and `name=@file` pairs from the command line.

    A file is read up to `max_chars` characters (the prompt limit: a prompt that includes
    the input could not be longer), so `@/dev/zero` or a FIFO cannot grow without bound.
    """
    raw: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise InputError(f"--input {pair!r} is not name=value (or name=@file)")
        raw[name.strip()] = _read_value(name, value, max_chars)
    return raw


def input_file_limit(source: RunSource, workflow: str) -> int:
    """The most characters an input file may hold: the workflow's prompt limit."""
    spec = source.project.workflows.get(workflow) if source.project is not None else None
    limit = spec.guard.max_prompt_chars if spec is not None else None
    return limit or DEFAULT_MAX_PROMPT_CHARS


def _read_value(name: str, value: str, max_chars: int) -> str:
    if not value.startswith("@"):
        return value
    path = Path(value[1:]).expanduser()
    try:
        return read_text_at_most(path, max_chars)
    except FileTooLarge as exc:
        raise InputError(_too_large(f"--input {name}=@{path}", exc.size, max_chars)) from None
    except UnicodeDecodeError:
        raise InputError(
            f"--input {name}=@{path}: the file is not UTF-8 text; inputs are text, "
            "convert it (e.g. iconv) or pass a text file"
        ) from None
    except OSError as exc:
        raise InputError(
            f"--input {name}=@{path}: cannot read the file ({exc.strerror}); "
            "check the path, or pass the value directly as name=value"
        ) from None


def _too_large(what: str, size: int | None, limit: int) -> str:
    if size is not None:
        found = f"the file is {size:,} bytes, more than the {limit:,} characters"
    else:
        found = f"the file has more than {limit:,} characters, the most"
    return (
        f"{what}: {found} an input file may hold (the prompt limit, guard.max_prompt_chars, "
        f"default {DEFAULT_MAX_PROMPT_CHARS:,}: an input cannot be longer than the prompt "
        "that includes it); pass a smaller file, or raise `guard: {max_prompt_chars: N}` "
        "on the workflow"
    )


def run_workflow(
    path: Path,
    workflow: str,
    pairs: list[str],
    *,
    as_json: bool,
    budget_usd: float | None = None,
    budget_tokens: int | None = None,
) -> Coroutine[Any, Any, int]:
    """Check everything that can be checked before starting, then run.

    Locally the config file is loaded and checked first; in remote mode it is not read:
    the server runs its own workflow of that name. `budget_usd` / `budget_tokens` give
    the run a budget replacing the workflow's per-run budget (docs/budgets.md).
    """
    settings = Settings()
    source = read_source(settings, path, workflow)
    raw = parse_inputs(pairs, max_chars=input_file_limit(source, workflow))
    budget = run_budget(budget_usd, budget_tokens)
    return _start(settings, source, workflow, raw, as_json=as_json, budget=budget)


def run_budget(usd: float | None, tokens: int | None) -> BudgetSpec | None:
    """The budget of `--budget-usd` / `--budget-tokens`, or None when neither is given."""
    if usd is None and tokens is None:
        return None
    try:
        return BudgetSpec(usd=usd, tokens=tokens)
    except ValidationError:
        raise InputError(
            "--budget-usd must be a number more than 0 and --budget-tokens a whole number "
            f"more than 0 (at most {MAX_BUDGET_TOKENS:_})"
        ) from None


async def _start(
    settings: Settings,
    source: RunSource,
    workflow: str,
    raw: dict[str, str],
    *,
    as_json: bool,
    budget: BudgetSpec | None = None,
) -> int:
    async with open_client(settings, workers=True) as client:
        run = await client.start(source, workflow, raw, budget=budget)
        if not as_json:
            err().print(f"run [bold]{run.id}[/] started ({escape(workflow)})")
        return await follow_run(client, run, as_json=as_json)


async def follow_run(
    client: RunsClient,
    run: RunRecord,
    *,
    as_json: bool,
    after: int = 0,
    console: Console | None = None,
) -> int:
    """Show a run until it ends, its progress on `console` (stderr by default). Ctrl-C
    stops following: a local run is interrupted and left resumable, a remote one
    continues on the server."""
    main = asyncio.current_task()
    assert main is not None
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, main.cancel)
    try:
        await _show(client, run, as_json=as_json, after=after, console=console)
    except asyncio.CancelledError:
        err().print("\n" + client.detached_note(run))
        return EXIT_INTERRUPTED
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
    final = await client.get_run(run.id)
    steps = await client.steps(run.id)
    if as_json:
        calls = await client.calls(run.id)
        out().print_json(json.dumps(run_to_json(final, steps, calls)))
    else:
        cost = run_cost(final, steps)
        print_outputs(out(), err(), final, cost, process_gone=client.process_gone(final))
    return EXIT_OK if final.status is RunStatus.SUCCEEDED else EXIT_FAILED


async def _show(
    client: RunsClient, run: RunRecord, *, as_json: bool, after: int, console: Console | None
) -> None:
    from rich.console import Console

    step_ids = await client.plan(run)
    console = console or Console(stderr=True, quiet=as_json)
    with ProgressView(console, step_ids=step_ids) as view:
        view.restore(await client.steps(run.id))
        async for event in client.follow(run.id, after=after):
            view.handle(event)
