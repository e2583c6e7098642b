"""What a command-line agent needs on this machine, checked when its config is loaded:
a known preset with a command, its binary on PATH, credentials the tool can authenticate
with, a git repository for worktrees, and `prlimit` when it sets resource limits."""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from agentmill.agents.cli.presets import load_presets, preset_problems
from agentmill.settings import credential_present, granted_environment
from agentmill.spec.models import WORKTREE, AgentSpec
from agentmill.spec.presets import DEFAULT_PRESET, Credentials, PresetSpec

__all__ = ["CredentialCheck", "Problem", "agent_problem", "binary_of", "find_credentials"]

Problem = tuple[str, str | None, str | None]
"""(message, the agent's key it is about or None, hint)."""


def agent_problem(
    agent: AgentSpec, *, presets: Mapping[str, PresetSpec], base_dir: Path
) -> Problem | None:
    """The first thing stopping this agent from running here, or None."""
    known = load_presets(presets)
    name = agent.preset or DEFAULT_PRESET
    if name not in known:
        return (
            f"unknown preset '{name}'",
            "preset",
            f"use one of {', '.join(sorted(known))}, or define it under `presets:`",
        )
    command = agent.command or known[name].command
    if not command:
        return (
            f"preset '{name}' has no command of its own",
            None,
            "give the agent a `command: [program, arg, ...]`",
        )
    return (
        _template_problem(agent)
        or _binary_problem(command[0], name, known[name])
        or _credentials_problem(agent, name, known[name])
        or _repo_problem(agent, base_dir)
        or _limits_problem(agent)
    )


def _template_problem(agent: AgentSpec) -> Problem | None:
    """The agent's own argument and stdin templates, checked like a preset's."""
    own = PresetSpec(command=[*(agent.command or []), *agent.args], stdin=agent.stdin)
    for problem in preset_problems(own):
        key = "stdin" if agent.stdin is not None and agent.stdin in problem else "command"
        return (
            problem,
            key,
            "templates may use {{ prompt }}, {{ run_id }}, {{ step_id }}, {{ workdir }}",
        )
    return None


def binary_of(command: list[str]) -> str | None:
    """The program a command runs, when it has one and it is not a template."""
    program = command[0] if command else ""
    return None if not program or "{{" in program or "{%" in program else program


def _binary_problem(program: str, preset_name: str, preset: PresetSpec) -> Problem | None:
    if binary_of([program]) is None or shutil.which(program) is not None:
        return None
    hint = preset.install or "install it, or fix the first item of `command`"
    return f"'{program}' (preset {preset_name}) is not on PATH", "command", hint


@dataclass(frozen=True, kw_only=True)
class CredentialCheck:
    """Where a tool's credentials were found: a variable's or a file's name, never a value."""

    found: str | None
    ungranted: tuple[str, ...] = ()
    """Key variables set in the worker but not granted to the tool."""

    def missing(self, tool: str, credentials: Credentials) -> str:
        """Why `tool` cannot authenticate (when `found` is None), naming what it looked for."""
        if self.ungranted:
            verb = "is" if len(self.ungranted) == 1 else "are"
            env = f"{', '.join(self.ungranted)} {verb} set but not in the agent's `env`"
        else:
            env = f"none of {', '.join(credentials.env)} is set"
        files = f", and there is no {' or '.join(credentials.files)}" if credentials.files else ""
        return f"{tool} cannot authenticate here: {env}{files}"


def find_credentials(credentials: Credentials, granted: Sequence[str]) -> CredentialCheck:
    """Whether a tool granted the variables `granted` finds any of its `credentials`."""
    env = granted_environment(list(granted))
    for name in credentials.env:
        if env.get(name):
            return CredentialCheck(found=name)
    for pattern in credentials.files:
        path = _credential_file(pattern, env)
        if path is not None and path.is_file():
            return CredentialCheck(found=pattern)
    ungranted = tuple(
        name for name in credentials.env if name not in env and credential_present(name)
    )
    return CredentialCheck(found=None, ungranted=ungranted)


def _credential_file(pattern: str, env: Mapping[str, str]) -> Path | None:
    """`~/x` in the tool's home directory, `$NAME/x` under the granted variable NAME."""
    if pattern.startswith("~/"):
        home = Path(env["HOME"]) if env.get("HOME") else Path.home()
        return home / pattern[2:]
    if pattern.startswith("$"):
        name, _, rest = pattern[1:].partition("/")
        return Path(env[name]) / rest if env.get(name) else None
    return Path(pattern)


def _credentials_problem(agent: AgentSpec, name: str, preset: PresetSpec) -> Problem | None:
    credentials = preset.credentials
    if agent.command or credentials is None or not (credentials.env or credentials.files):
        return None  # an agent with its own command may run anything: nothing to check
    granted = agent.env if agent.env is not None else preset.env
    check = find_credentials(credentials, granted)
    if check.found is not None:
        return None
    key = "env" if agent.env is not None else None
    hint = credentials.login or "give the tool its key in a variable listed in `env`"
    return check.missing(name, credentials), key, hint


def _repo_problem(agent: AgentSpec, base_dir: Path) -> Problem | None:
    if agent.workdir not in (None, WORKTREE):
        directory = (base_dir / str(agent.workdir)).resolve()
        if directory.is_dir():
            return None
        return f"workdir {directory} is not a directory", "workdir", "create it or fix `workdir`"
    repo = (base_dir / agent.repo).resolve()
    if any((folder / ".git").exists() for folder in (repo, *repo.parents)):
        return None
    return (
        f"worktrees need a git repository, and {repo} is not one",
        "repo",
        "point `repo` at a repository (relative to the config file), run "
        "`git init && git commit --allow-empty -m init` there, or set `workdir` to a directory",
    )


def _limits_problem(agent: AgentSpec) -> Problem | None:
    limits = agent.limits
    wanted = (limits.cpu, limits.memory, limits.processes, limits.files)
    if all(value is None for value in wanted) or shutil.which("prlimit") is not None:
        return None
    return (
        "resource limits need the `prlimit` program, which is not on PATH",
        "limits",
        "install util-linux (apt install util-linux), or remove `limits`",
    )
