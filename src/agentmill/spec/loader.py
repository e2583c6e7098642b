"""Loading a project file: YAML with line numbers, schema errors at file:line, then validation.

Every problem found is reported at once in one `ConfigError`: YAML syntax, duplicate keys,
unknown keys (with a "did you mean"), wrong types, bad durations, and the cross-reference
checks of `validate`. Pydantic's errors are mapped back to YAML lines (in `_schema_errors`),
so the messages speak of keys and steps rather than of pydantic types.

A document too costly to load is refused before anything walks it: more than
`MAX_CONFIG_BYTES` (the file is never read further), more than `MAX_DEPTH` levels of
nesting, or more than `MAX_VALUES` values, aliases expanded (`_yaml_limits`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

from agentmill.errors import ConfigError, ConfigProblem
from agentmill.spec._schema_errors import schema_problems
from agentmill.spec._yaml_limits import MAX_DEPTH, MAX_VALUES, LimitedLoader, YamlLimitExceeded
from agentmill.spec.files import FileTooLarge, read_bytes_at_most
from agentmill.spec.models import (
    AgentSpec,
    McpServerSpec,
    ModelEndpoint,
    ProjectSpec,
    StepSpec,
    ToolSpec,
    WorkflowSpec,
)
from agentmill.spec.validate import validate_project

__all__ = [
    "MAX_CONFIG_BYTES",
    "MAX_DEPTH",
    "MAX_VALUES",
    "LoadedProject",
    "NodePath",
    "load_project",
    "load_project_text",
]

MAX_CONFIG_BYTES = 1024 * 1024
"""The largest config file agentmill reads (1 MiB); long texts belong in inputs."""
_MAX_SIZE = f"a config file may be at most 1 MiB ({MAX_CONFIG_BYTES:,} bytes)"
_SIZE_HINT = "keep long texts out of the config: pass them as inputs (--input name=@file)"

NodePath = tuple[str | int, ...]
"""Where a node is: keys and list indexes from the top, e.g. ("workflows", "w", "steps", 0)."""

_MERGE_TAG = "tag:yaml.org,2002:merge"
_YAML_HINTS = {
    "'\\t'": "indent with spaces, not tabs",
    "mapping values are not allowed": "quote values that contain ': ' (e.g. prompt: \"Fix: this\")",
    "found undefined alias": "define the &anchor before using the *alias",
    "expected <block end>": "check the indentation of this line and the ones above it",
    "single document": "keep one document per file (remove the '---' line)",
}
_DEFAULT_YAML_HINT = "check the indentation and quote strings that contain ': ', '#', '{' or '['"


@dataclass(frozen=True, kw_only=True)
class _Lines:
    """Line numbers of the nodes of one YAML document."""

    lines: Mapping[NodePath, int] = field(default_factory=dict[NodePath, int])
    """1-based line of each key (or list item)."""
    blocks: Mapping[NodePath, int] = field(default_factory=dict[NodePath, int])
    """For `|` block values: the 1-based line of the text's first line."""


@dataclass(frozen=True)
class LoadedProject:
    """A validated project file, with the line of every node for later error reports."""

    spec: ProjectSpec
    path: Path
    _lines: _Lines = field(default_factory=_Lines, repr=False, compare=False)

    @property
    def file(self) -> str:
        """The file name as problems report it."""
        return str(self.path)

    def line_of(self, *parts: str | int) -> int | None:
        """The 1-based line of a node, e.g. `line_of("workflows", "w", "steps", 2, "agent")`.

        Falls back to the nearest ancestor that has a line (a missing key is reported
        where its parent is); None only for an empty document.
        """
        path: NodePath = parts
        while path:
            if path in self._lines.lines:
                return self._lines.lines[path]
            path = path[:-1]
        return self._lines.lines.get(())

    def line_in(self, *parts: str | int, line: int) -> int | None:
        """The file line of line `line` (1-based) of a text value, e.g. of a template error.

        Exact for `|` block values; otherwise the line of the value's key.
        """
        start = self._lines.blocks.get(parts)
        return start + line - 1 if start is not None else self.line_of(*parts)

    def problem(self, message: str, *parts: str | int, hint: str | None = None) -> ConfigProblem:
        """A problem reported at the line of the node `parts`."""
        return ConfigProblem(file=self.file, line=self.line_of(*parts), message=message, hint=hint)


Checks = Callable[["LoadedProject"], list[ConfigProblem]]
"""Extra checks from outer layers (e.g. model availability), reported with the spec's own."""


def load_project(path: Path, *, checks: Checks | None = None) -> LoadedProject:
    """Read, parse and validate a project file; raises ConfigError listing every problem."""
    return load_project_text(_read(path), str(path), checks=checks)


def load_project_text(text: str, filename: str, *, checks: Checks | None = None) -> LoadedProject:
    """Parse and validate project text; `filename` is used in the problems' file:line."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_CONFIG_BYTES:
        message = f"the config is {size:,} bytes; {_MAX_SIZE}"
        raise ConfigError(
            [ConfigProblem(file=filename, line=None, message=message, hint=_SIZE_HINT)]
        )
    data, lines, problems = _parse_yaml(text, filename)
    if not isinstance(data, dict):
        where = LoadedProject(ProjectSpec(), Path(filename), lines)
        raise ConfigError([*problems, _not_a_mapping(where, data)])
    try:
        spec = ProjectSpec.model_validate(data)
    except ValidationError as exc:
        where = LoadedProject(ProjectSpec(), Path(filename), lines)
        problems += schema_problems(exc, data, where)
        spec = _salvage(data)
    loaded = LoadedProject(spec, Path(filename), lines)
    problems += validate_project(loaded)
    if checks is not None:
        problems += checks(loaded)
    if problems:
        raise ConfigError(sorted(problems, key=lambda p: p.line or 0))
    return loaded


def _read(path: Path) -> str:
    file = str(path)
    try:
        data = read_bytes_at_most(path, MAX_CONFIG_BYTES)
    except FileTooLarge as exc:
        raise ConfigError([_too_large(file, exc.size)]) from None
    except FileNotFoundError as exc:
        hint = f"no file at {path.absolute()}; check the path"
        problem = ConfigProblem(file=file, line=None, message="file not found", hint=hint)
        raise ConfigError([problem]) from exc
    except IsADirectoryError as exc:
        hint = "pass the YAML file itself, e.g. agentmill.yaml"
        problem = ConfigProblem(file=file, line=None, message="is a directory", hint=hint)
        raise ConfigError([problem]) from exc
    except OSError as exc:
        message = f"cannot read the file: {exc.strerror or exc}"
        raise ConfigError([ConfigProblem(file=file, line=None, message=message)]) from exc
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        hint = "save the file as UTF-8"
        problem = ConfigProblem(file=file, line=line, message="not UTF-8 text", hint=hint)
        raise ConfigError([problem]) from exc


def _too_large(file: str, size: int | None) -> ConfigProblem:
    if size is not None:
        message = f"the file is {size:,} bytes; {_MAX_SIZE}"
    else:  # not a regular file (a device, a pipe): its size is unknown
        message = (
            f"the file is larger than 1 MiB ({MAX_CONFIG_BYTES:,} bytes), "
            "the most a config file may be"
        )
    return ConfigProblem(file=file, line=None, message=message, hint=_SIZE_HINT)


def _parse_yaml(text: str, file: str) -> tuple[Any, _Lines, list[ConfigProblem]]:
    """The document, the line of each node, and duplicate-key problems."""
    try:
        loader = LimitedLoader(text)
    except yaml.YAMLError as exc:  # e.g. a NUL or other control character
        problem = ConfigProblem(file=file, line=None, message=f"invalid YAML: {exc}")
        raise ConfigError([problem]) from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None, _Lines(), []
        index = _Index(file)
        index.visit(node, ())
        data = loader.construct_document(node)
    except YamlLimitExceeded as exc:
        problem = ConfigProblem(file=file, line=exc.line, message=exc.message, hint=exc.hint)
        raise ConfigError([problem]) from None
    except yaml.MarkedYAMLError as exc:
        raise ConfigError([_yaml_problem(exc, file)]) from exc
    except yaml.YAMLError as exc:
        problem = ConfigProblem(file=file, line=None, message=f"invalid YAML: {exc}")
        raise ConfigError([problem]) from exc
    except RecursionError:
        message = "invalid YAML: nested too deeply to read"
        raise ConfigError([ConfigProblem(file=file, line=None, message=message)]) from None
    finally:
        loader.dispose()
    return data, _Lines(lines=index.lines, blocks=index.blocks), index.problems


class _Index:
    """Walks a composed YAML node tree, noting lines and duplicate keys."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.lines: dict[NodePath, int] = {}
        self.blocks: dict[NodePath, int] = {}
        self.problems: list[ConfigProblem] = []
        self._seen: set[int] = set()

    def visit(self, node: yaml.Node, path: NodePath) -> None:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.ScalarNode) and node.style == "|":
            self.blocks[path] = node.start_mark.line + 2
        if isinstance(node, yaml.ScalarNode) or id(node) in self._seen:
            return  # an alias of a node already walked: its lines are those of the anchor
        self._seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            self._visit_mapping(node, path)
        elif isinstance(node, yaml.SequenceNode):
            for position, item in enumerate(node.value):
                self.visit(item, (*path, position))

    def _visit_mapping(self, node: yaml.MappingNode, path: NodePath) -> None:
        first: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                continue
            key: str = key_node.value
            line = key_node.start_mark.line + 1
            if key in first:
                hint = f"remove one of them (the first is at line {first[key]})"
                message = f"duplicate key '{key}'"
                self.problems.append(
                    ConfigProblem(file=self.file, line=line, message=message, hint=hint)
                )
            first.setdefault(key, line)
            child = (*path, _typed_key(key_node))
            self.lines[child] = line
            self.visit(value_node, child)


def _typed_key(node: yaml.ScalarNode) -> str | int:
    """The key as the constructed data has it (`1:` is the int 1)."""
    if node.tag == "tag:yaml.org,2002:int":
        try:
            return int(node.value)
        except ValueError:
            return str(node.value)
    return str(node.value)


def _yaml_problem(exc: yaml.MarkedYAMLError, file: str) -> ConfigProblem:
    mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark is not None else None
    problem = exc.problem or "cannot parse"
    message = (
        f"invalid YAML: {exc.context}, {problem}" if exc.context else f"invalid YAML: {problem}"
    )
    hint = next((h for key, h in _YAML_HINTS.items() if key in message), _DEFAULT_YAML_HINT)
    return ConfigProblem(file=file, line=line, message=message, hint=hint)


def _not_a_mapping(where: LoadedProject, data: Any) -> ConfigProblem:
    example = "models:, agents: and workflows:"
    if data is None:
        return where.problem("the file is empty", hint=f"a project file has {example}")
    got = type(data).__name__
    message = f"the top level must be a mapping of keys, not a {got}"
    return where.problem(message, hint=f"start with keys such as {example}")


_M = TypeVar("_M", bound=BaseModel)
_MODEL_ADAPTER: TypeAdapter[str | ModelEndpoint] = TypeAdapter(str | ModelEndpoint)
_PLACEHOLDERS = {"prompt": ""}
"""Required keys whose stand-in cannot cause a second problem (an empty template)."""


def _salvage(data: dict[Any, Any]) -> ProjectSpec:
    """The valid parts of an invalid file, so cross-reference checks can still run.

    Agents, workflows and steps are kept without their invalid keys; what cannot be kept
    becomes a placeholder (agents, models: their names stay known) or is left out
    (workflows with a step that has no valid id or agent).
    """
    models: dict[str, str | ModelEndpoint] = {}
    for name, value in _section(data, "models").items():
        try:
            models[name] = _MODEL_ADAPTER.validate_python(value)
        except ValidationError:
            models[name] = ModelEndpoint.model_construct(name="?")
    agents: dict[str, AgentSpec] = {}
    for name, value in _section(data, "agents").items():
        agents[name] = _lenient_agent(value) or AgentSpec.model_construct()
    workflows: dict[str, WorkflowSpec] = {}
    for name, value in _section(data, "workflows").items():
        if (workflow := _lenient_workflow(value)) is not None:
            workflows[name] = workflow
    mcp = {
        name: _lenient(McpServerSpec, value) or McpServerSpec.model_construct()
        for name, value in _section(data, "mcp").items()
    }
    return ProjectSpec.model_construct(models=models, agents=agents, workflows=workflows, mcp=mcp)


def _lenient_agent(value: Any) -> AgentSpec | None:
    """An agent whose invalid `tools:` entries are blanks, so the valid ones keep their
    positions (and lines) for the cross-reference checks."""
    if not isinstance(value, dict) or not isinstance(tools := value.get("tools"), list):
        return _lenient(AgentSpec, value)
    agent = _lenient(AgentSpec, {**value, "tools": []})
    if agent is None:
        return None
    kept = [_lenient(ToolSpec, tool) or ToolSpec.model_construct() for tool in tools]
    return agent.model_copy(update={"tools": kept})


def _section(data: dict[Any, Any], key: str) -> dict[str, Any]:
    value = data.get(key)
    if not isinstance(value, dict):
        return {}
    return {name: item for name, item in value.items() if isinstance(name, str)}


def _lenient_workflow(value: Any) -> WorkflowSpec | None:
    if isinstance(value, dict) and isinstance(steps := value.get("steps"), list):
        kept = [_lenient(StepSpec, step) for step in steps]
        if all(step is not None for step in kept):
            value = {**value, "steps": kept}
    return _lenient(WorkflowSpec, value)


def _lenient(model: type[_M], value: Any) -> _M | None:
    """`value` as a `model` without its invalid top-level keys, or None if that fails too."""
    if isinstance(value, str) and model is ToolSpec:
        value = {"builtin": value}
    if not isinstance(value, dict):
        return None
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        bad = {error["loc"][0] for error in exc.errors() if error["loc"]}
    kept = {key: item for key, item in value.items() if key not in bad}
    kept |= {key: _PLACEHOLDERS[key] for key in bad if key in _PLACEHOLDERS}
    try:
        return model.model_validate(kept)
    except ValidationError:
        return None
