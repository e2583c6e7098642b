"""What an agent's tools need on this machine, checked when its config is loaded (by
`agentmill validate`, `run`, `serve` and `doctor`), so a missing piece fails before a run:

- a `function:` tool imports from the config file's directory, is callable, and pydantic-ai
  can build its schema (its signature and docstring become what the model sees);
- a stdio MCP server's program is on PATH (or is an existing file) and its `cwd` exists;
- the variables an HTTP MCP server's headers read (`${NAME}`) are set (values never shown);
- the workspace of an agent's built-in tools exists (a directory, or a git repository for
  `workdir: worktree`).

Whether an MCP server answers and which tools it offers is for `doctor` (it starts them).
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import shutil
import sys
from collections.abc import Callable, Generator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentmill.errors import ConfigProblem
from agentmill.settings import credential_present
from agentmill.spec.models import WORKTREE, AgentSpec, McpServerSpec
from agentmill.spec.tools import FILE_TOOLS, PROGRAM_TOOL

if TYPE_CHECKING:
    from agentmill.spec.loader import LoadedProject

__all__ = ["FunctionToolError", "import_function", "machine_tool_problems", "mcp_cwd"]

_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_WORKSPACE_TOOLS = (*FILE_TOOLS, PROGRAM_TOOL)


class FunctionToolError(Exception):
    """Why a `module:function` cannot be a tool (`message`), and how to fix it (`hint`)."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


def machine_tool_problems(loaded: LoadedProject) -> list[ConfigProblem]:
    """Every tool of the file that cannot work on this machine, at the line of its entry."""
    base = loaded.path.resolve().parent
    problems: list[ConfigProblem] = []
    for name, server in loaded.spec.mcp.items():
        problems += _server_problems(loaded, name, server, base)
    for name, agent in loaded.spec.agents.items():
        if agent.runtime == "llm":
            problems += _workspace_problems(loaded, name, agent, base)
    targets = {
        tool.function.partition(":")[0]
        for agent in loaded.spec.agents.values()
        for tool in agent.tools
        if tool.function is not None
    }
    with _modules_forgotten(targets, base):
        problems += _function_problems(loaded, base)
    return problems


def _function_problems(loaded: LoadedProject, base: Path) -> list[ConfigProblem]:
    problems: list[ConfigProblem] = []
    checked: dict[tuple[str, str | None], FunctionToolError | None] = {}
    for name, agent in loaded.spec.agents.items():
        for position, tool in enumerate(agent.tools if agent.runtime == "llm" else []):
            if tool.function is None:
                continue
            key = (tool.function, tool.description)
            if key not in checked:
                checked[key] = _function_problem(tool.function, base, tool.description)
            if (found := checked[key]) is not None:
                message = f"agent '{name}': function tool '{tool.function}': {found.message}"
                where = ("agents", name, "tools", position, "function")
                problems.append(loaded.problem(message, *where, hint=found.hint))
    return problems


@contextmanager
def _modules_forgotten(targets: set[str], base_dir: Path) -> Generator[None]:
    """The tools' own modules (and their packages) first imported by a check are dropped
    afterwards, so a process that checks the file again, or another file with a module of the
    same name, imports afresh. Nothing else is: dropping a library, or agentmill itself, would
    split its classes and context variables in two."""
    packages = {target.split(".")[0] for target in targets}
    before = set(sys.modules)
    try:
        yield
    finally:
        for name in set(sys.modules) - before:
            if name.split(".")[0] not in packages:
                continue
            file = getattr(sys.modules[name], "__file__", None)
            if file is not None and _is_project_file(Path(file).resolve(), base_dir):
                del sys.modules[name]


def _is_project_file(path: Path, base_dir: Path) -> bool:
    """Under the config's directory, and not in a virtualenv's packages kept there."""
    installed = {"site-packages", "dist-packages"}
    return path.is_relative_to(base_dir) and installed.isdisjoint(path.parts)


@contextmanager
def _importable_from(directory: Path) -> Generator[None]:
    """`directory` first on sys.path for the block; sys.path as it was afterwards."""
    saved = list(sys.path)
    sys.path.insert(0, str(directory))
    importlib.invalidate_caches()
    try:
        yield
    finally:
        sys.path[:] = saved


def import_function(target: str, base_dir: Path) -> Callable[..., Any]:
    """The function `module:function` names, imported with `base_dir` (the config file's
    directory) on sys.path; raises FunctionToolError naming the cause and the fix."""
    module_name, _, attribute = target.partition(":")
    with _importable_from(base_dir):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name or module_name.startswith(f"{exc.name}."):
                hint = f"put {module_name.replace('.', '/')}.py next to the config file "
                hint += f"({base_dir}) or install the package that provides it"
                raise FunctionToolError(f"no module named '{module_name}'", hint) from None
            raise _import_failure(module_name, exc) from None
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - user code may raise anything
            raise _import_failure(module_name, exc) from None
    found = getattr(module, attribute, None)
    if found is None:
        names = [name for name, value in vars(module).items() if _defined_in(value, module_name)]
        hint = f"functions in {module_name}: {', '.join(sorted(names)) or 'none'}"
        raise FunctionToolError(f"module '{module_name}' has no '{attribute}'", hint)
    if not callable(found):
        kind = type(found).__name__
        hint = "name a function (def or async def) of the module"
        raise FunctionToolError(f"'{attribute}' is not a function ({kind})", hint)
    return found


def _defined_in(value: object, module_name: str) -> bool:
    """A public function of the module itself (not one it imported)."""
    return (
        inspect.isfunction(value)
        and value.__module__ == module_name
        and not value.__name__.startswith("_")
    )


def _import_failure(module_name: str, exc: BaseException) -> FunctionToolError:
    """An import that raised: the error's first line, without the user's traceback."""
    first = str(exc).splitlines()[0] if str(exc) else ""
    message = f"importing '{module_name}' failed: {type(exc).__name__}: {first}".rstrip(": ")
    return FunctionToolError(message, f"run `python -c 'import {module_name}'` to see why")


def _function_problem(
    target: str, base_dir: Path, description: str | None
) -> FunctionToolError | None:
    """Why `target` cannot be a pydantic-ai tool, or None."""
    from pydantic_ai.tools import Tool

    try:
        function = import_function(target, base_dir)
    except FunctionToolError as exc:
        return exc
    try:
        Tool(function, description=description)
    except Exception as exc:  # noqa: BLE001 - schema generation raises many kinds
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        hint = "give every parameter a type pydantic understands (str, int, list[str], a "
        hint += "pydantic model, ...); its docstring describes the tool to the model"
        return FunctionToolError(f"no tool schema can be built from it: {first}", hint)
    return None


def mcp_cwd(server: McpServerSpec, base_dir: Path) -> Path:
    """The working directory of a stdio server: its `cwd` relative to the config file."""
    return (base_dir / (server.cwd or ".")).resolve()


def _server_problems(
    loaded: LoadedProject, name: str, server: McpServerSpec, base: Path
) -> list[ConfigProblem]:
    at = ("mcp", name)
    if server.command is not None:
        cwd = mcp_cwd(server, base)
        if not cwd.is_dir():
            message = f"MCP server '{name}': cwd {cwd} is not a directory"
            return [loaded.problem(message, *at, "cwd", hint="create it or fix `cwd`")]
        found = _program_problem(server.command[0], cwd)
        if found is None:
            return []
        message, hint = found
        return [loaded.problem(f"MCP server '{name}': {message}", *at, "command", 0, hint=hint)]
    problems: list[ConfigProblem] = []
    for header, value in server.headers.items():
        for variable in _PLACEHOLDER.findall(value):
            if not credential_present(variable):
                message = f"MCP server '{name}': header '{header}' reads ${{{variable}}}, "
                message += "which is not set"
                hint = f"set {variable} in the environment agentmill runs in"
                problems.append(loaded.problem(message, *at, "headers", header, hint=hint))
    return problems


def _program_problem(program: str, cwd: Path) -> tuple[str, str] | None:
    """Why a server's program cannot be started from `cwd`, or None."""
    if "/" in program:
        path = (cwd / program).resolve()
        if path.is_file() and os.access(path, os.X_OK):
            return None
        what = "is not an executable file" if path.exists() else "does not exist"
        return f"program {path} {what}", "fix the first item of `command`"
    if shutil.which(program) is not None:
        return None
    hint = f"install {program}, or give its full path as the first item of `command`"
    return f"program '{program}' is not on PATH", hint


def _workspace_problems(
    loaded: LoadedProject, name: str, agent: AgentSpec, base: Path
) -> list[ConfigProblem]:
    """The workspace that the agent's file tools and `run_command` work in must exist."""
    if not any(tool.builtin in _WORKSPACE_TOOLS for tool in agent.tools):
        return []
    if agent.workdir is not None and agent.workdir != WORKTREE:
        directory = (base / agent.workdir).resolve()
        if directory.is_dir():
            return []
        message = f"agent '{name}': workdir {directory} is not a directory"
        return [loaded.problem(message, "agents", name, "workdir", hint="create it or fix it")]
    if agent.workdir is None:
        return []
    repo = (base / agent.repo).resolve()
    if any((folder / ".git").exists() for folder in (repo, *repo.parents)):
        return []
    message = f"agent '{name}': worktrees need a git repository, and {repo} is not one"
    hint = "point `repo` at a repository (relative to the config file) or set `workdir` to "
    hint += "a directory"
    return [loaded.problem(message, "agents", name, "repo", hint=hint)]
