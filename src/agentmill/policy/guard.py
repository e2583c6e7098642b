"""The guard: prompt-injection screen of untrusted inputs, and prompt and output size limits.

Outermost of the policies (see `policy/chain.py`): a blocked call is refused before the
cache, the budget or any model sees it. Untrusted text reaches the guard on
`StepRequest.untrusted`, computed per call by `untrusted_sources`: the inputs a step's
prompt reads that are declared `untrusted: true`, or every input of a run started by a
webhook. The patterns live in `policy/injection.py`; docs/guards.md explains the lot.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from typing import Any, cast

from jinja2 import TemplateSyntaxError

from agentmill.agents.base import Agent, StepContext, StepRequest, StepResult, as_durable
from agentmill.errors import GuardBlocked
from agentmill.policy.injection import Finding, screen
from agentmill.spec.models import GuardSpec, WorkflowSpec
from agentmill.spec.templates import references

__all__ = [
    "DEFAULT_MAX_OUTPUT_CHARS",
    "DEFAULT_MAX_PROMPT_CHARS",
    "GuardedAgent",
    "guarded",
    "untrusted_sources",
]

logger = logging.getLogger("agentmill.policy.guard")

DEFAULT_MAX_PROMPT_CHARS = 1_000_000
"""Limit of a rendered prompt when the workflow sets no `guard.max_prompt_chars`."""
DEFAULT_MAX_OUTPUT_CHARS = 1_000_000
"""Limit of a call's output when the workflow sets no `guard.max_output_chars`."""


def guarded(inner: Agent, *, guard: GuardSpec, bounds_own_output: bool = False) -> Agent:
    """`inner` behind the workflow's guard (always: the size limits have defaults).

    An agent that `bounds_own_output` (a command-line tool, capped at its `max_output`)
    gets an output limit only when the workflow sets `max_output_chars` itself.
    """
    return GuardedAgent(inner, guard=guard, bounds_own_output=bounds_own_output)


class GuardedAgent(Agent):
    """Refuses oversized prompts, screens untrusted text, and bounds the output."""

    def __init__(self, inner: Agent, *, guard: GuardSpec, bounds_own_output: bool = False) -> None:
        self.inner = inner
        self.guard = guard
        self.bounds_own_output = bounds_own_output

    async def run(self, request: StepRequest, context: StepContext) -> StepResult:
        self._check_prompt(request)
        flagged = self._screen(request)
        limit = self._output_limit()
        if limit is not None:
            context = _BoundedContext(context, limit=limit, key=request.key, preset=self._preset)
        result = await self.inner.run(request, context)
        size = _turn_size(result.output) if request.turn is not None else _size(result.output)
        if limit is not None and size > limit:
            raise GuardBlocked(_output_message(request.key, size, limit, self._preset))
        if flagged:
            details = {**result.details, "guard": {"flagged": flagged}}
            result = dataclasses.replace(result, details=details)
        return result

    @property
    def _preset(self) -> bool:
        return self.guard.max_output_chars is None

    def _output_limit(self) -> int | None:
        if self.guard.max_output_chars is not None:
            return self.guard.max_output_chars
        return None if self.bounds_own_output else DEFAULT_MAX_OUTPUT_CHARS

    def _check_prompt(self, request: StepRequest) -> None:
        limit = self.guard.max_prompt_chars or DEFAULT_MAX_PROMPT_CHARS
        size = len(request.prompt)
        if size > limit:
            default = " (the built-in default)" if self.guard.max_prompt_chars is None else ""
            fix = "shorten the inputs the prompt includes"
            if request.turn is not None:
                fix = (
                    "the request holds the conversation so far with its tool results: bound"
                    " them with `guard: {max_output_chars: N}`, lower the agent's max_turns,"
                    " shorten the inputs"
                )
            raise GuardBlocked(
                f"prompt of step '{request.key}' is {size:,} characters, limit {limit:,}"
                f"{default} (guard.max_prompt_chars); {fix},"
                " or raise `guard: {max_prompt_chars: N}` on the workflow"
            )

    def _screen(self, request: StepRequest) -> list[dict[str, str]]:
        """The matches as recorded in `details.guard.flagged`; raises in block mode."""
        mode = self.guard.injection
        if mode == "off":
            return []
        flagged: list[dict[str, str]] = []
        for source, text in request.untrusted:
            for finding in screen(text):
                if mode == "block":
                    raise GuardBlocked(_blocked_message(source, finding))
                logger.warning(
                    "step input %s matched prompt-injection pattern %r (near %r);"
                    " the call runs (guard: flag)",
                    source,
                    finding.pattern,
                    finding.excerpt,
                )
                flagged.append({"source": source, "pattern": finding.pattern})
        return flagged


class _BoundedContext:
    """Passes streamed text on until the output limit, then stops the call."""

    def __init__(self, inner: StepContext, *, limit: int, key: str, preset: bool) -> None:
        self._inner = inner
        self._durable = as_durable(inner)
        self._limit = limit
        self._key = key
        self._preset = preset
        self._chars = 0

    async def emit_text(self, text: str) -> None:
        self._chars += len(text)
        if self._chars > self._limit:
            raise GuardBlocked(
                _output_message(self._key, self._chars, self._limit, self._preset, streamed=True)
            )
        await self._inner.emit_text(text)

    async def emit_event(self, kind: str, **data: Any) -> None:
        await self._durable.emit_event(kind, **data)

    @property
    def saved(self) -> Mapping[str, Any]:
        return self._durable.saved

    async def save(self, **values: Any) -> None:
        await self._durable.save(**values)

    def note(self, **details: Any) -> None:
        self._durable.note(**details)

    @property
    def timed_out(self) -> bool:
        return self._durable.timed_out


def _blocked_message(source: str, finding: Finding) -> str:
    return (
        f"step input {source} matched prompt-injection pattern '{finding.pattern}'"
        f' (near "{finding.excerpt}"); the guard is set to block. If the text is'
        " legitimate, set `guard: {injection: flag}` on the workflow to let such calls run"
        " and record the match (or `injection: off` to stop screening)"
    )


def _output_message(
    key: str, size: int, limit: int, preset: bool, *, streamed: bool = False
) -> str:
    default = " (the built-in default)" if preset else ""
    reached = "went past" if streamed else "is"
    kept = "; the text streamed before the limit stays in the run's events" if streamed else ""
    return (
        f"output of step '{key}' {reached} {size:,} characters, limit {limit:,}{default}"
        f" (guard.max_output_chars){kept}. Lower the agent's max_tokens or raise"
        " `guard: {max_output_chars: N}` on the workflow"
    )


def _size(output: Any) -> int:
    if isinstance(output, str):
        return len(output)
    return len(json.dumps(output, ensure_ascii=False, default=str))


def _turn_size(response: Any) -> int:
    """What one model request of an agent loop wrote: its text and its tool calls (names
    and arguments), not the rest of the response's record (usage, model, timestamps)."""
    if not isinstance(response, dict):
        return _size(response)
    size = 0
    for part in cast("dict[str, Any]", response).get("parts") or []:
        kind = part.get("part_kind")
        if kind in {"text", "thinking"}:
            size += len(part.get("content") or "")
        elif kind == "tool-call":
            size += len(part.get("tool_name") or "") + _size(part.get("args") or "")
    return size


def untrusted_sources(
    prompt_template: str,
    workflow: WorkflowSpec,
    inputs: dict[str, Any],
    *,
    triggered: bool,
    foreach: str | None = None,
) -> tuple[tuple[str, str], ...]:
    """The untrusted text a call's prompt includes, as ("inputs.<name>", text) pairs.

    Untrusted are the inputs declared `untrusted: true` and, in a run started by a webhook
    (`triggered`), every input. Only inputs the prompt template reads count; when the
    prompt reads a `foreach` step's `item`, so do the inputs its `foreach` reads. Values
    that are not strings are JSON-encoded. Nothing is computed while the screen is off.
    """
    if workflow.guard.injection == "off":
        return ()
    names = [
        name
        for name, value in inputs.items()
        if value is not None
        and (triggered or (name in workflow.inputs and workflow.inputs[name].untrusted))
    ]
    if not names:
        return ()
    read = _inputs_read(prompt_template, names)
    if foreach is not None and _reads_item(prompt_template):
        read |= _inputs_read(foreach, names)
    return tuple((f"inputs.{name}", _text(inputs[name])) for name in names if name in read)


def _inputs_read(template: str, names: list[str]) -> set[str]:
    """Which of `names` a template reads; all of them when it reads `inputs` as a whole
    (e.g. `inputs | tojson`, or `inputs[variable]`)."""
    try:
        refs = references(template)
    except TemplateSyntaxError:  # cannot happen after validation; screen everything
        return set(names)
    read: set[str] = set()
    for ref in refs:
        if ref.root != "inputs":
            continue
        if not ref.path or not isinstance(ref.path[0], str):
            return set(names)
        read.add(ref.path[0])
    return read


def _reads_item(template: str) -> bool:
    try:
        return any(ref.root == "item" for ref in references(template))
    except TemplateSyntaxError:
        return True


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)
