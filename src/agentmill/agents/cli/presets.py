"""Presets: how to run a command-line coding agent and read what it prints, as data.

A preset (`agentmill.spec.presets.PresetSpec`) says which argv starts the tool (and which
resumes an interrupted session), what goes to its stdin, whether its stdout is plain text or
JSON lines, and for JSON lines which lines carry text, tool calls, the session id, the final
result, cost and tokens. The built-ins live in `presets.yaml` beside this module; a
project's `presets:` adds tools or changes fields of a built-in one.

Argv templates are rendered one element at a time with the sandboxed Jinja environment of
`agentmill.spec.templates`: an element stays one argument whatever the values hold (quotes,
`$(...)`, `;`, a leading `--`), and no shell ever sees it.

The path language of event rules (`message.content[type=text].text`):

    key.key        dict keys, one after another
    [*]            every element of a list
    [key=value]    the elements of a list whose `key` equals `value` (compared as text)
    [3]            one element of a list

A path yields every value it reaches, in document order; JSON `null`s are skipped.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

import yaml
from jinja2 import TemplateSyntaxError
from pydantic import TypeAdapter

from agentmill.errors import TemplateRenderError
from agentmill.spec.presets import EventRule, PresetSpec
from agentmill.spec.templates import references, render

__all__ = [
    "TEMPLATE_VARIABLES",
    "EventRule",
    "PresetSpec",
    "compile_path",
    "extractors",
    "load_presets",
    "preset_problems",
    "render_argv",
    "select",
]

TEMPLATE_VARIABLES: tuple[str, ...] = ("prompt", "run_id", "step_id", "workdir", "session_id")
"""The variables a preset template may use; `session_id` only in `resume`."""

_EXTRACTORS = (
    "text",
    "tool",
    "session",
    "result",
    "cost_usd",
    "input_tokens",
    "output_tokens",
    "error",
)


def extractors(rule: EventRule) -> list[tuple[str, str]]:
    """(name, path) of the extractors a rule sets, in a fixed order."""
    found = ((name, getattr(rule, name)) for name in _EXTRACTORS)
    return [(name, path) for name, path in found if path is not None]


def preset_problems(preset: PresetSpec) -> list[str]:
    """What makes a preset unusable: event rules that do not fit its output, paths and
    templates that do not parse, variables no call provides. Empty when it is fine."""
    problems: list[str] = []
    if preset.events and preset.output != "jsonl":
        problems.append("`events` apply only to `output: jsonl`")
    if preset.output == "jsonl" and not preset.events:
        problems.append("`output: jsonl` needs at least one rule under `events`")
    for index, rule in enumerate(preset.events):
        problems.extend(f"events[{index}]: {problem}" for problem in _rule_problems(rule))
    problems.extend(
        f"ignore: {pattern!r} is not a file pattern (e.g. `.aider*` or `logs/`)"
        for pattern in preset.ignore
        if not pattern.strip("/") or pattern.startswith(("!", ":")) or ".." in pattern.split("/")
    )
    first = set(TEMPLATE_VARIABLES) - {"session_id"}
    for template in (*preset.command, *([preset.stdin] if preset.stdin is not None else [])):
        problems.extend(_template_problems(template, first))
    for template in preset.resume or ():
        problems.extend(_template_problems(template, set(TEMPLATE_VARIABLES)))
    return problems


def _rule_problems(rule: EventRule) -> list[str]:
    problems = [] if rule.match else ["`match` needs at least one key, e.g. {type: result}"]
    for path in (*rule.match, *(path for _, path in extractors(rule))):
        try:
            compile_path(path)
        except ValueError as exc:
            problems.append(str(exc))
    return problems


def _template_problems(template: str, allowed: set[str]) -> list[str]:
    try:
        found = references(template)
    except TemplateSyntaxError as exc:
        return [f"template {template!r}: {exc.message} (line {exc.lineno})"]
    unknown = sorted({ref.root for ref in found} - allowed)
    if unknown:
        known = ", ".join(sorted(allowed))
        return [f"template {template!r} uses {', '.join(unknown)}; known here: {known}"]
    return []


def render_argv(templates: Sequence[str], variables: Mapping[str, str]) -> tuple[str, ...]:
    """Render each argv template to exactly one argument; never split, never a shell.

    Raises TemplateRenderError naming the element that failed, or that rendered to text
    containing a NUL byte (which no argv element can carry).
    """
    context = dict(variables)
    argv: list[str] = []
    for index, template in enumerate(templates):
        try:
            value = render(template, context)
        except TemplateRenderError as exc:
            raise TemplateRenderError(
                f"argv element {index} ({template!r}): {exc}", variable=exc.variable
            ) from exc
        if "\0" in value:
            raise TemplateRenderError(
                f"argv element {index} ({template!r}) rendered to text containing a NUL byte"
            )
        argv.append(value)
    return tuple(argv)


def load_presets(extra: Mapping[str, PresetSpec] | None = None) -> dict[str, PresetSpec]:
    """The built-in presets overlaid by a project's `extra`.

    A name the built-ins do not have adds a preset; a built-in name changes only the fields
    the project set (`claude: {concurrency: 2}` keeps claude's command and events). A new
    `command` without a new `resume` drops the built-in `resume`, which names its program.
    """
    presets = dict(_builtin_presets())
    for name, preset in (extra or {}).items():
        builtin = presets.get(name)
        presets[name] = preset if builtin is None else _overlay(builtin, preset)
    return presets


def _overlay(builtin: PresetSpec, change: PresetSpec) -> PresetSpec:
    if not change.model_fields_set:
        return builtin
    merged = builtin.model_dump()
    merged.update(change.model_dump(include=set(change.model_fields_set)))
    if "command" in change.model_fields_set and "resume" not in change.model_fields_set:
        merged["resume"] = None  # the built-in's resume runs the built-in's program
    return PresetSpec.model_validate(merged)


@functools.cache
def _builtin_presets() -> Mapping[str, PresetSpec]:
    package = resources.files("agentmill.agents.cli")
    data = yaml.safe_load(package.joinpath("presets.yaml").read_text(encoding="utf-8"))
    presets = _PRESETS.validate_python(data)
    for name, preset in presets.items():
        problems = preset_problems(preset)
        if problems:
            raise RuntimeError(f"built-in preset {name!r} is broken: {'; '.join(problems)}")
    return presets


_PRESETS = TypeAdapter(dict[str, PresetSpec])


# --- the path language -------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class _Step:
    kind: Literal["key", "all", "where", "index"]
    key: str = ""
    """The dict key (`key`), or the element key a `where` compares."""
    value: str = ""
    """The text a `where` compares with."""
    index: int = 0


CompiledPath = tuple[_Step, ...]


@functools.lru_cache(maxsize=512)
def compile_path(path: str) -> CompiledPath:
    """Parse a rule path; raises ValueError with the path and what is wrong in it."""
    steps: list[_Step] = []
    for part in _split_dots(path):
        name, _, rest = part.partition("[")
        if name:
            steps.append(_Step(kind="key", key=name))
        elif not rest:
            raise ValueError(f"path {path!r} has an empty key")
        if rest:
            steps.extend(_selectors(path, "[" + rest))
    return tuple(steps)


def _split_dots(path: str) -> list[str]:
    """Split on the dots outside brackets (a `[key=v.1]` value may hold dots)."""
    parts: list[str] = []
    current = ""
    depth = 0
    for char in path:
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"path {path!r} has an unmatched ']'")
        if char == "." and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    if depth != 0:
        raise ValueError(f"path {path!r} has an unclosed '['")
    parts.append(current)
    if any(part == "" for part in parts):
        raise ValueError(f"path {path!r} has an empty key")
    return parts


def _selectors(path: str, text: str) -> list[_Step]:
    steps: list[_Step] = []
    while text:
        if not text.startswith("[") or "]" not in text:
            raise ValueError(f"path {path!r}: expected '[...]' at {text!r}")
        inner, text = text[1:].split("]", 1)
        steps.append(_selector(path, inner))
    return steps


def _selector(path: str, inner: str) -> _Step:
    if inner == "*":
        return _Step(kind="all")
    if "=" in inner:
        key, value = inner.split("=", 1)
        if not key:
            raise ValueError(f"path {path!r}: '[{inner}]' needs a key before '='")
        return _Step(kind="where", key=key, value=value)
    try:
        return _Step(kind="index", index=int(inner))
    except ValueError:
        raise ValueError(
            f"path {path!r}: '[{inner}]' is not '[*]', '[key=value]' or '[number]'"
        ) from None


def select(data: Any, path: str) -> list[Any]:
    """Every non-null value `path` reaches in `data`, in document order."""
    values: list[Any] = [data]
    for step in compile_path(path):
        values = [found for value in values for found in _apply(step, value)]
    return [value for value in values if value is not None]


def _apply(step: _Step, value: Any) -> list[Any]:
    if step.kind == "key":
        return [value[step.key]] if isinstance(value, dict) and step.key in value else []
    if not isinstance(value, list):
        return []
    items: list[Any] = value
    if step.kind == "all":
        return items
    if step.kind == "index":
        return [items[step.index]] if -len(items) <= step.index < len(items) else []
    return [item for item in items if _where(item, step)]


def _where(item: Any, step: _Step) -> bool:
    found = select(item, step.key) if isinstance(item, dict) else []
    return any(_as_text(value) == step.value for value in found)


def _as_text(value: Any) -> str:
    """JSON scalars as a rule compares them: `true`/`false` for booleans, else str()."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
