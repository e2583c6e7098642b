"""Cross-reference checks of a project: names, dependencies, models and template variables.

These run on a schema-valid `ProjectSpec` (see `loader`) and return problems instead of
raising, so the loader can report them together with every other problem of the file.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from jinja2 import TemplateSyntaxError

from agentmill.errors import ConfigProblem
from agentmill.spec.inputs import type_problem
from agentmill.spec.models import StepSpec, WorkflowSpec
from agentmill.spec.templates import Reference, references

if TYPE_CHECKING:
    from agentmill.spec.loader import LoadedProject

__all__ = [
    "APPROVAL_FIELDS",
    "CLI_STEP_FIELDS",
    "KNOWN_PROVIDERS",
    "LOCAL_MODELS",
    "STEP_FIELDS",
    "TRIGGER_VARIABLES",
    "did_you_mean",
    "find_cycles",
    "join_hints",
    "model_string_problem",
    "validate_project",
]

KNOWN_PROVIDERS = (
    "openai",
    "anthropic",
    "google-gla",
    "google-vertex",
    "google",
    "groq",
    "mistral",
    "ollama",
    "local",
    "test",
)
"""Prefixes accepted in model strings such as `openai:gpt-4o`."""

LOCAL_MODELS = ("local:smollm2",)
"""The models agentmill runs in-process."""

STEP_FIELDS = ("output", "skipped", "usage")
"""What a template can read of an upstream step: `steps.<id>.output`, `.skipped`, `.usage`."""

CLI_STEP_FIELDS = (*STEP_FIELDS, "diff")
"""A step of a command-line agent also has `steps.<id>.diff` (its worktree's changes)."""

APPROVAL_FIELDS = ("output", "skipped", "approved", "comment")
"""What a template can read of an approval gate: `steps.<id>.approved`, `.comment`, ..."""

_TEMPLATE_HINT = "templates use Jinja2: {{ expression }}, {% if ... %}...{% endif %}"

Problem = tuple[str, str | None]
"""A message and its hint, before a line is attached."""


def did_you_mean(word: str, options: Iterable[str]) -> str | None:
    """`did you mean 'x'?` for the closest option, or None if none is close."""
    matches = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f"did you mean '{matches[0]}'?" if matches else None


def validate_project(loaded: LoadedProject) -> list[ConfigProblem]:
    """Every cross-reference problem of a loaded project, in file order per section."""
    from agentmill.spec._validate_tools import tool_problems  # it builds on this module

    problems = _check_models(loaded) + _check_agents(loaded) + _check_limits(loaded)
    problems += tool_problems(loaded)
    for name in loaded.spec.workflows:
        problems += _WorkflowCheck(loaded, name).run()
    for position in range(len(loaded.spec.triggers)):
        problems += _check_trigger(loaded, position)
    return problems


def model_string_problem(model: str) -> Problem | None:
    """Why `model` is not a usable `provider:name` string, or None if it is."""
    provider, colon, name = model.partition(":")
    if not colon or not provider or not name.strip():
        return f"'{model}' is not a model string", "write provider:name, e.g. openai:gpt-4o"
    if provider not in KNOWN_PROVIDERS:
        known = f"known providers: {', '.join(KNOWN_PROVIDERS)}"
        hint = did_you_mean(provider, KNOWN_PROVIDERS)
        return f"unknown model provider '{provider}' in '{model}'", join_hints(hint, known)
    if provider == "local" and model not in LOCAL_MODELS:
        return f"unknown local model '{model}'", f"local models: {', '.join(LOCAL_MODELS)}"
    return None


def _check_models(loaded: LoadedProject) -> list[ConfigProblem]:
    problems: list[ConfigProblem] = []
    for key, value in loaded.spec.models.items():
        if isinstance(value, str) and (found := model_string_problem(value)):
            message, hint = found
            problems.append(loaded.problem(f"model '{key}': {message}", "models", key, hint=hint))
    return problems


def _model_ref_problem(ref: str, aliases: list[str]) -> Problem | None:
    """Why `ref` (a key of `models` or a model string) names no usable model, or None."""
    if ref in aliases:
        return None
    found = model_string_problem(ref)
    if found and ":" not in ref:
        known = f"use a name from 'models' ({', '.join(aliases) or 'none defined'})"
        return f"unknown model '{ref}'", join_hints(
            did_you_mean(ref, aliases), f"{known} or provider:name"
        )
    return found


def _check_agents(loaded: LoadedProject) -> list[ConfigProblem]:
    problems: list[ConfigProblem] = []
    aliases = list(loaded.spec.models)
    for name, agent in loaded.spec.agents.items():
        refs: list[tuple[str, tuple[str | int, ...]]] = []
        if agent.model is not None:
            refs.append((agent.model, ("agents", name, "model")))
        refs += [(ref, ("agents", name, "fallback", i)) for i, ref in enumerate(agent.fallback)]
        for ref, where in refs:
            if found := _model_ref_problem(ref, aliases):
                message = f"agent '{name}' uses {found[0]}"
                problems.append(loaded.problem(message, *where, hint=found[1]))
        if agent.output is not None and agent.output.get("type") != "object":
            message = f"the output schema of agent '{name}' must be a JSON schema of type: object"
            hint = "e.g. output: {type: object, properties: {verdict: {type: string}}}"
            problems.append(loaded.problem(message, "agents", name, "output", hint=hint))
    return problems


def _check_limits(loaded: LoadedProject) -> list[ConfigProblem]:
    """`limits` keys name a provider (`openai`) or a model (`openai:gpt-4o`)."""
    problems: list[ConfigProblem] = []
    for key in loaded.spec.limits:
        provider = key.partition(":")[0]
        if provider not in KNOWN_PROVIDERS:
            hint = join_hints(
                did_you_mean(provider, KNOWN_PROVIDERS), "e.g. openai or openai:gpt-4o"
            )
            message = f"limits: '{key}' names no known provider"
            problems.append(loaded.problem(message, "limits", key, hint=hint))
    return problems


@dataclass(frozen=True, kw_only=True)
class _Scope:
    """Where a template is and which variables it may use."""

    parts: tuple[str | int, ...]
    what: str
    step: StepSpec | None = None
    """The step the template belongs to; None for workflow outputs, which may read any step."""
    item: str | None = None
    """Why `item` and `index` are not available here; None if they are."""


class _WorkflowCheck:
    """The checks of one workflow: ids, needs, cycles, agents, inputs and templates."""

    def __init__(self, loaded: LoadedProject, name: str) -> None:
        self.loaded = loaded
        self.name = name
        self.workflow: WorkflowSpec = loaded.spec.workflows[name]
        self.base = ("workflows", name)
        self.problems: list[ConfigProblem] = []
        self.index: dict[str, int] = {}
        for position, step in enumerate(self.workflow.steps):
            self.index.setdefault(step.id, position)
        self.upstream = _upstream(self.workflow.steps, self.index)
        self.known_steps = f"steps in workflow '{name}': {', '.join(self.index)}"

    def run(self) -> list[ConfigProblem]:
        self._check_inputs()
        for position, step in enumerate(self.workflow.steps):
            self._check_step(position, step)
        self._check_cycles()
        for position, step in enumerate(self.workflow.steps):
            self._check_step_templates(position, step)
        for key, text in (self.workflow.outputs or {}).items():
            what = f"output '{key}' of workflow '{self.name}'"
            scope = _Scope(parts=(*self.base, "outputs", key), what=what, item="outputs")
            self._check_template(text, scope)
        return self.problems

    def _add(self, message: str, *parts: str | int, hint: str | None = None) -> None:
        self.problems.append(self.loaded.problem(message, *self.base, *parts, hint=hint))

    def _check_inputs(self) -> None:
        for name, spec in self.workflow.inputs.items():
            if spec.required or spec.default is None:
                continue
            if (found := type_problem(spec.type, spec.default)) is not None:
                self._add(f"the default of input '{name}' {found}", "inputs", name, "default")

    def _check_step(self, position: int, step: StepSpec) -> None:
        at = ("steps", position)
        if self.index[step.id] != position:
            first = self.loaded.line_of(*self.base, "steps", self.index[step.id])
            hint = f"step ids must be unique within a workflow; the first is at line {first}"
            self._add(
                f"duplicate step id '{step.id}' in workflow '{self.name}'", *at, "id", hint=hint
            )
        for number, need in enumerate(step.needs):
            if need not in self.index:
                hint = join_hints(did_you_mean(need, self.index), self.known_steps)
                self._add(
                    f"step '{step.id}' needs unknown step '{need}'", *at, "needs", number, hint=hint
                )
        if step.agent is not None and "prompt" not in step.model_fields_set:
            hint = "the text sent to the agent; it may use {{ inputs.x }} and {{ steps.y.output }}"
            self._add(f"missing required key 'prompt' in step '{step.id}'", *at, hint=hint)
        agents = self.loaded.spec.agents
        if step.agent is not None and step.agent not in agents:
            known = f"known agents: {', '.join(agents)}" if agents else "no agents are defined"
            hint = join_hints(did_you_mean(step.agent, agents), known)
            self._add(
                f"step '{step.id}' uses unknown agent '{step.agent}'", *at, "agent", hint=hint
            )
        if step.concurrency is not None and step.foreach is None:
            hint = "concurrency caps the parallel calls of a foreach step; add foreach or remove it"
            self._add(
                f"step '{step.id}' sets concurrency without foreach", *at, "concurrency", hint=hint
            )

    def _check_cycles(self) -> None:
        graph: dict[str, list[str]] = {}
        for step in self.workflow.steps:
            graph.setdefault(step.id, [need for need in step.needs if need in self.index])
        for cycle in find_cycles(graph):
            first = self.workflow.steps[self.index[cycle[0]]]
            message = f"dependency cycle in workflow '{self.name}': {' -> '.join(cycle)}"
            hint = "each arrow means 'needs'; remove one of these needs"
            at = ("steps", self.index[cycle[0]], "needs", first.needs.index(cycle[1]))
            self._add(message, *at, hint=hint)

    def _check_step_templates(self, position: int, step: StepSpec) -> None:
        no_item = "only steps with foreach have 'item' and 'index'"
        at = (*self.base, "steps", position)
        prompt_at = (*at, "approval", "prompt") if step.approval is not None else (*at, "prompt")
        prompt = step.approval.prompt if step.approval is not None else step.prompt
        foreach_item = None if step.foreach is not None else no_item
        when_item = "'when' is evaluated once per step, before any foreach item"
        foreach_own = "'foreach' itself is evaluated before there are items"
        checks = (
            (prompt, prompt_at, f"the prompt of step '{step.id}'", foreach_item),
            (step.when, (*at, "when"), f"'when' of step '{step.id}'", when_item),
            (step.foreach, (*at, "foreach"), f"'foreach' of step '{step.id}'", foreach_own),
        )
        for text, parts, what, item in checks:
            if text is not None:
                self._check_template(text, _Scope(parts=parts, what=what, step=step, item=item))

    def _check_template(self, text: str, scope: _Scope) -> None:
        try:
            found = references(text)
        except TemplateSyntaxError as exc:
            line = self.loaded.line_in(*scope.parts, line=exc.lineno)
            message = f"template error in {scope.what}: {exc.message or exc}"
            problem = ConfigProblem(
                file=self.loaded.file, line=line, message=message, hint=_TEMPLATE_HINT
            )
            self.problems.append(problem)
            return
        seen: set[tuple[str, int | None]] = set()
        for ref in found:
            problem = self._reference_problem(ref, scope)
            line = self.loaded.line_in(*scope.parts, line=ref.lineno)
            if problem is None or (problem[0], line) in seen:
                continue
            seen.add((problem[0], line))
            message, hint = problem
            self.problems.append(
                ConfigProblem(file=self.loaded.file, line=line, message=message, hint=hint)
            )

    def _reference_problem(self, ref: Reference, scope: _Scope) -> Problem | None:
        if ref.root == "inputs":
            return self._input_problem(ref, scope)
        if ref.root == "steps":
            return self._step_problem(ref, scope)
        if ref.root in ("item", "index"):
            if scope.item is None:
                return None
            return f"{scope.what} uses '{ref.root}', which is not defined there", scope.item
        roots = ["inputs", "steps", *(["item", "index"] if scope.item is None else [])]
        hint = join_hints(did_you_mean(ref.root, roots), f"templates can use: {', '.join(roots)}")
        return f"{scope.what} uses unknown variable '{ref.root}'", hint

    def _input_problem(self, ref: Reference, scope: _Scope) -> Problem | None:
        declared = self.workflow.inputs
        if not ref.path or ref.path[0] in declared:
            return None
        name = str(ref.path[0])
        known = f"declared inputs: {', '.join(declared)}" if declared else None
        declare = f"declare it in the workflow: inputs: {{{name}: {{type: string}}}}"
        hint = join_hints(did_you_mean(name, declared), known) or declare
        return f"{scope.what} uses unknown input '{name}'", hint

    def _step_problem(self, ref: Reference, scope: _Scope) -> Problem | None:
        if not ref.path:
            return None
        target = str(ref.path[0])
        if target not in self.index:
            hint = join_hints(did_you_mean(target, self.index), self.known_steps)
            return f"{scope.what} refers to unknown step '{target}'", hint
        if scope.step is not None and (found := self._order_problem(target, scope)):
            return found
        fields = self._fields_of(self.workflow.steps[self.index[target]])
        if len(ref.path) > 1 and ref.path[1] not in fields:
            field = str(ref.path[1])
            hint = join_hints(did_you_mean(field, fields), f"a step has: {', '.join(fields)}")
            return f"{scope.what} uses unknown field '{field}' of step '{target}'", hint
        return None

    def _fields_of(self, step: StepSpec) -> tuple[str, ...]:
        if step.approval is not None:
            return APPROVAL_FIELDS
        agent = self.loaded.spec.agents.get(step.agent or "")
        return CLI_STEP_FIELDS if agent is not None and agent.runtime == "cli" else STEP_FIELDS

    def _order_problem(self, target: str, scope: _Scope) -> Problem | None:
        """Whether the step of `scope` runs after `target`, so that it can read its output."""
        assert scope.step is not None
        step = scope.step.id
        if step == target:
            return f"{scope.what} refers to its own step", "a step can only read the steps it needs"
        if target in self.upstream[step]:
            return None
        if step in self.upstream[target]:
            hint = f"step '{target}' needs step '{step}' (directly or through other steps)"
            return f"{scope.what} refers to step '{target}', which runs after it", hint
        needs = ", ".join([*(need for need in scope.step.needs if need in self.index), target])
        hint = f"add it to the needs of step '{step}': needs: [{needs}]"
        return f"{scope.what} refers to step '{target}', which is not upstream of it", hint


TRIGGER_VARIABLES = ("event", "action", "payload", "delivery")
"""What trigger templates can read: the event name, its action, the payload, the delivery id."""

_EVENT_PATTERN = re.compile(r"^[a-z_]+(\.[a-z_]+)?$")


def _check_trigger(loaded: LoadedProject, position: int) -> list[ConfigProblem]:
    trigger = loaded.spec.triggers[position].github
    at = ("triggers", position, "github")
    problems: list[ConfigProblem] = []
    for number, event in enumerate(trigger.events):
        if not _EVENT_PATTERN.match(event):
            hint = "write a GitHub event name, optionally with an action: pull_request.opened"
            problems.append(
                loaded.problem(f"'{event}' is not an event", *at, "events", number, hint=hint)
            )
    workflow = loaded.spec.workflows.get(trigger.workflow)
    if workflow is None:
        known = ", ".join(loaded.spec.workflows) or "none"
        hint = join_hints(
            did_you_mean(trigger.workflow, loaded.spec.workflows), f"workflows: {known}"
        )
        message = f"trigger {position + 1} starts unknown workflow '{trigger.workflow}'"
        return [*problems, loaded.problem(message, *at, "workflow", hint=hint)]
    for name in trigger.inputs:
        if name not in workflow.inputs:
            known = f"inputs of '{trigger.workflow}': {', '.join(workflow.inputs) or 'none'}"
            hint = join_hints(did_you_mean(name, workflow.inputs), known)
            problems.append(
                loaded.problem(
                    f"trigger sets unknown input '{name}'", *at, "inputs", name, hint=hint
                )
            )
    missing = [
        n for n, spec in workflow.inputs.items() if spec.required and n not in trigger.inputs
    ]
    if missing:
        hint = f"map them from the payload, e.g. inputs: {{{missing[0]}: '{{{{ payload.x }}}}'}}"
        problems.append(
            loaded.problem(
                f"trigger does not set required inputs: {', '.join(missing)}",
                *at,
                "workflow",
                hint=hint,
            )
        )
    templates = [(("inputs", n), t) for n, t in trigger.inputs.items()]
    templates.append((("concurrency", "key"), trigger.concurrency.key))
    for parts, text in templates:
        problems += _trigger_template_problems(loaded, (*at, *parts), text)
    return problems


def _trigger_template_problems(
    loaded: LoadedProject, parts: tuple[str | int, ...], text: str
) -> list[ConfigProblem]:
    try:
        found = references(text)
    except TemplateSyntaxError as exc:
        message = f"template error in trigger: {exc.message or exc}"
        return [loaded.problem(message, *parts, hint=_TEMPLATE_HINT)]
    problems: list[ConfigProblem] = []
    for ref in found:
        if ref.root not in TRIGGER_VARIABLES:
            hint = join_hints(did_you_mean(ref.root, TRIGGER_VARIABLES),
                         f"trigger templates can use: {', '.join(TRIGGER_VARIABLES)}")  # fmt: skip
            problems.append(
                loaded.problem(
                    f"trigger template uses unknown variable '{ref.root}'", *parts, hint=hint
                )
            )
    return problems


def _upstream(steps: list[StepSpec], index: Mapping[str, int]) -> dict[str, frozenset[str]]:
    """For each step id, every step it needs, directly or through other steps."""
    result: dict[str, frozenset[str]] = {}
    for step in steps:
        found: set[str] = set()
        pending = [need for need in step.needs if need in index]
        while pending:
            need = pending.pop()
            if need not in found:
                found.add(need)
                pending += [n for n in steps[index[need]].needs if n in index]
        result.setdefault(step.id, frozenset(found))
    return result


def find_cycles(graph: Mapping[str, list[str]]) -> list[list[str]]:
    """Cycles of a dependency graph, each once, as `[a, b, c, a]` (a needs b needs c ...)."""
    done: set[str] = set()
    cycles: list[list[str]] = []
    reported: set[frozenset[str]] = set()
    for root in graph:
        if root in done:
            continue
        path, branches = [root], [iter(graph[root])]
        while branches:
            following = next(branches[-1], None)
            if following is None:
                branches.pop()
                done.add(path.pop())
            elif following in path:
                cycle = [*path[path.index(following) :], following]
                if frozenset(cycle) not in reported:
                    reported.add(frozenset(cycle))
                    cycles.append(cycle)
            elif following not in done:
                path.append(following)
                branches.append(iter(graph[following]))
    return cycles


def join_hints(*hints: str | None) -> str | None:
    """The hints that are given, as one text (None if none is)."""
    return " ".join(hint for hint in hints if hint) or None
