"""Pydantic validation errors as config problems at file:line, in plain words.

A pydantic `loc` is mapped onto the data: parts found in it form the node path; other parts
are union branch names (`str`, `ModelEndpoint`), whose errors are merged into one problem.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from agentmill.errors import ConfigProblem
from agentmill.spec.models import (
    AgentSpec,
    InputSpec,
    McpServerSpec,
    ModelEndpoint,
    ProjectSpec,
    StepSpec,
    ToolSpec,
    WorkflowSpec,
)
from agentmill.spec.validate import did_you_mean

if TYPE_CHECKING:
    from agentmill.spec.loader import LoadedProject, NodePath

__all__ = ["schema_problems"]


_OWNERS: tuple[tuple[NodePath, str, type[BaseModel]], ...] = (
    (("workflows", "*", "steps", "#"), "step", StepSpec),
    (("workflows", "*", "inputs", "*"), "input", InputSpec),
    (("workflows", "*"), "workflow", WorkflowSpec),
    (("agents", "*", "tools", "#"), "tool", ToolSpec),
    (("agents", "*"), "agent", AgentSpec),
    (("mcp", "*"), "MCP server", McpServerSpec),
    (("models", "*"), "model", ModelEndpoint),
    ((), "top level", ProjectSpec),
)
_EXPECTED = {
    "string_type": "a string",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}
_BOUNDS = {
    "greater_than": ("gt", "greater than"),
    "greater_than_equal": ("ge", "at least"),
    "less_than": ("lt", "less than"),
    "less_than_equal": ("le", "at most"),
}
_MODEL_HINT = (
    "write a model string like openai:gpt-4o, or {provider: openai, name: ..., base_url: ...}"
)
_KEY_HINTS = {
    "steps": "a workflow needs a list of steps: [{id: ..., agent: ..., prompt: ...}]",
    "agent": "name one of the agents defined under 'agents'",
    "prompt": "the text sent to the agent; it may use {{ inputs.x }} and {{ steps.y.output }}",
    "id": "every step needs an id, unique within its workflow",
    "name": "the model name as its server knows it, e.g. llama3.2",
}


@dataclass(frozen=True, kw_only=True)
class _Owner:
    """The step, agent, ... that holds a node, for messages like "in step 'x'"."""

    path: NodePath
    kind: str
    model: type[BaseModel]
    name: str
    parent: str = ""
    """Whose it is, for owners named within another (" of agent 'x'" for a tool)."""

    @property
    def where(self) -> str:
        return f"in {self.kind} '{self.name}'{self.parent}" if self.path else "at the top level"

    def subject(self, path: NodePath) -> str:
        relative = path[len(self.path) :]
        if not relative:
            return f"{self.kind} '{self.name}'{self.parent}"
        key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in relative)[1:]
        return f"'{key}' {self.where}" if self.path else f"'{key}'"


@dataclass(frozen=True, kw_only=True)
class _Error:
    path: NodePath
    union: NodePath | None
    """Where a union was tried branch by branch (its branch errors are merged)."""
    detail: ErrorDetails


def schema_problems(exc: ValidationError, data: Any, where: LoadedProject) -> list[ConfigProblem]:
    problems: list[ConfigProblem] = []
    unions: dict[NodePath, list[_Error]] = {}
    for detail in exc.errors(include_url=False):
        error = _normalize(detail, data)
        if error.union is None:
            problems.append(_problem(error, data, where))
        else:
            unions.setdefault(error.union, []).append(error)
    for path, group in unions.items():
        deeper = [error for error in group if len(error.path) > len(path)]
        if deeper:
            problems += [_problem(error, data, where) for error in deeper]
        else:
            problems.append(_union_problem(path, group, data, where))
    return problems


def _normalize(detail: ErrorDetails, data: Any) -> _Error:
    path: list[str | int] = []
    union: NodePath | None = None
    current = data
    loc = detail["loc"]
    for position, part in enumerate(loc):
        if _has(current, part):
            current = current[part]
            path.append(part)
        elif position == len(loc) - 1 and detail["type"] == "missing":
            path.append(part)
        elif part != "[key]" and union is None:
            union = tuple(path)
    return _Error(path=tuple(path), union=union, detail=detail)


def _has(node: Any, part: str | int) -> bool:
    if isinstance(node, list):
        return isinstance(part, int) and 0 <= part < len(node)
    return isinstance(node, dict) and part in node


def _problem(error: _Error, data: Any, where: LoadedProject) -> ConfigProblem:
    detail, path = error.detail, error.path
    if detail["type"] in ("missing", "extra_forbidden"):
        return _key_problem(detail["type"], path, data, where)
    owner = _owner(path, data)
    if "[key]" in detail["loc"]:
        parent = ".".join(str(part) for part in path[:-1])
        message = f"the name {path[-1]!r} under '{parent}' must be a string"
        return where.problem(message, *path, hint=f"quote it: '{path[-1]}':")
    requirement, hint = _requirement(detail)
    separator = "" if requirement.startswith(":") else " "
    return where.problem(f"{owner.subject(path)}{separator}{requirement}", *path, hint=hint)


def _key_problem(kind: str, path: NodePath, data: Any, where: LoadedProject) -> ConfigProblem:
    owner, key = _owner(path[:-1], data), str(path[-1])
    if kind == "missing":
        return where.problem(
            f"missing required key '{key}' {owner.where}", *path, hint=_KEY_HINTS.get(key)
        )
    allowed = list(owner.model.model_fields)
    hint = did_you_mean(key, allowed) or f"allowed keys: {', '.join(allowed)}"
    return where.problem(f"unknown key '{key}' {owner.where}", *path, hint=hint)


def _union_problem(
    path: NodePath, group: list[_Error], data: Any, where: LoadedProject
) -> ConfigProblem:
    expected = dict.fromkeys(_EXPECTED.get(error.detail["type"], "valid") for error in group)
    subject = _owner(path, data).subject(path)
    message = f"{subject} must be {' or '.join(expected)}, got {_show(group[0].detail['input'])}"
    hint = None
    if path[:1] == ("models",):
        hint = _MODEL_HINT
    return where.problem(message, *path, hint=hint)


def _requirement(detail: ErrorDetails) -> tuple[str, str | None]:
    """What a value must be ("must be a list, got 'x'"), and a hint if there is one."""
    kind, ctx = detail["type"], detail.get("ctx", {})
    got = f", got {_show(detail['input'])}"
    if kind in _EXPECTED:
        return f"must be {_EXPECTED[kind]}{got}", None
    if kind in _BOUNDS:
        bound, words = _BOUNDS[kind]
        limit = ctx[bound]
        limit = int(limit) if isinstance(limit, float) and limit.is_integer() else limit
        return f"must be {words} {limit}{got}", None
    if kind == "literal_error":
        expected = str(ctx["expected"])
        return f"must be {'one of ' if ' or ' in expected else ''}{expected}{got}", None
    if kind == "string_pattern_mismatch":
        return f"must start with a letter and use only letters, digits, '-' and '_'{got}", None
    if kind in ("too_short", "string_too_short"):
        return "must not be empty", None
    if kind == "value_error":
        message, _, hint = str(ctx["error"]).rpartition(": use ")
        return (f": {message}", f"use {hint}") if message else (f": {hint}", None)
    return f": {detail['msg']}{got}", None


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing (null)"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _owner(path: NodePath, data: Any) -> _Owner:
    for pattern, kind, model in _OWNERS:
        if len(path) >= len(pattern) and all(map(_matches, pattern, path)):
            owner_path = path[: len(pattern)]
            parent = f" of agent '{owner_path[1]}'" if model is ToolSpec else ""
            name = _name(owner_path, data)
            return _Owner(path=owner_path, kind=kind, model=model, name=name, parent=parent)
    raise AssertionError("the empty pattern matches every path")


def _matches(pattern: str | int, part: str | int) -> bool:
    if pattern == "#":
        return isinstance(part, int)
    return pattern == "*" or pattern == part


def _name(path: NodePath, data: Any) -> str:
    node = data
    for part in path:
        node = node[part]
    if path[:1] == ("workflows",) and isinstance(path[-1], int):
        step_id = node.get("id") if isinstance(node, dict) else None
        return step_id if isinstance(step_id, str) else f"#{path[-1] + 1}"
    if path[:1] == ("agents",) and isinstance(path[-1], int):
        return _tool_name(node, path[-1])
    return str(path[-1]) if path else ""


def _tool_name(node: Any, position: int) -> str:
    """A `tools:` entry as messages name it: `read_file`, `mcp: git`, or `#2` if it has none."""
    if isinstance(node, str):
        return node
    if isinstance(node, dict):
        for kind in ("builtin", "mcp", "function", "agent"):
            value = node.get(kind)
            if isinstance(value, str):
                return value if kind == "builtin" else f"{kind}: {value}"
    return f"#{position + 1}"
