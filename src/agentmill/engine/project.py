"""Loading a config file for execution: the spec checks plus model availability."""

from __future__ import annotations

from pathlib import Path

from agentmill.agents.models import check_model
from agentmill.errors import ConfigProblem, UserError
from agentmill.spec.loader import LoadedProject, load_project
from agentmill.spec.models import ModelEndpoint

__all__ = [
    "cli_problems",
    "load_checked",
    "machine_problems",
    "model_problems",
    "tool_problems",
]


def load_checked(path: Path) -> LoadedProject:
    """Load and validate a config file, including that every model, command-line tool and
    agent tool it uses is usable here."""
    return load_project(path, checks=machine_problems)


def machine_problems(loaded: LoadedProject) -> list[ConfigProblem]:
    """What stops the file's models, command-line agents and agents' tools on this machine."""
    return model_problems(loaded) + cli_problems(loaded) + tool_problems(loaded)


def tool_problems(loaded: LoadedProject) -> list[ConfigProblem]:
    """Function tools that do not import, MCP programs not found, unset header variables,
    missing workspaces (see `agentmill.agents.tools.checks`)."""
    from agentmill.agents.tools.checks import machine_tool_problems

    return machine_tool_problems(loaded)


def cli_problems(loaded: LoadedProject) -> list[ConfigProblem]:
    """One problem per command-line agent whose preset, binary or repository is missing."""
    from agentmill.agents.cli.checks import agent_problem
    from agentmill.agents.cli.presets import load_presets, preset_problems

    problems: list[ConfigProblem] = []
    merged = load_presets(loaded.spec.presets)
    for name in loaded.spec.presets:
        for found in preset_problems(merged[name]):
            problems.append(loaded.problem(f"preset '{name}': {found}", "presets", name))
    base = loaded.path.resolve().parent
    for name, agent in loaded.spec.agents.items():
        if agent.runtime != "cli":
            continue
        found = agent_problem(agent, presets=loaded.spec.presets, base_dir=base)
        if found is not None:
            message, key, hint = found
            where = ("agents", name, key) if key else ("agents", name)
            problems.append(loaded.problem(f"agent '{name}': {message}", *where, hint=hint))
    return problems


def model_problems(loaded: LoadedProject) -> list[ConfigProblem]:
    """One problem per agent whose model lacks its package, key or file."""
    problems: list[ConfigProblem] = []
    spec = loaded.spec
    seen: dict[str, str | None] = {}
    for name, agent in spec.agents.items():
        if agent.runtime != "llm":
            continue
        where = ("agents", name, "model") if agent.model else ("agents", name)
        refs = [(spec.model_for(agent), where)]
        refs += [
            (ref, ("agents", name, "fallback", index))
            for index, ref in enumerate(spec.fallbacks_for(agent))
        ]
        for ref, path in refs:
            label = ref if isinstance(ref, str) else ref.model_dump_json()
            if label not in seen:
                seen[label] = _problem_text(ref)
            if seen[label] is not None:
                problems.append(loaded.problem(f"agent '{name}': {seen[label]}", *path))
    return problems


def _problem_text(ref: str | ModelEndpoint) -> str | None:
    try:
        check_model(ref)
    except UserError as exc:
        return str(exc)
    return None
