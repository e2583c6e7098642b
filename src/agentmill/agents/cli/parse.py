"""Reading a command-line agent's stdout, line by line, into events and a summary.

`output: text` tools: every line is text. `output: jsonl` tools: each line is matched
against the preset's event rules. A tool's stdout is not trusted to be well formed: a line
that is not a JSON object is kept as text, never raised on, so one stray `print` (or a
crash mid-line) does not fail a step whose work is done.

Text comes in two shapes: whole messages (Claude's assistant messages, Codex's
agent_message items), each ended with a newline when joined, and fragments of one stream
(Gemini's `{"type": "message", ..., "delta": true}`), joined as they come. A JSON line with
a top-level `"delta": true` carries fragments.

The step's output is `summary.result` when the tool reported one, else `summary.text`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Literal

from agentmill.agents.cli.presets import EventRule, PresetSpec, extractors, select

__all__ = ["DEFAULT_MAX_TEXT", "CliEvent", "CliSummary", "StreamParser"]

DEFAULT_MAX_TEXT = 4_000_000
"""Characters of text kept for the summary; text past it is still emitted as events."""

_USAGE_KEYS = ("cost_usd", "input_tokens", "output_tokens")
_SCALAR_KINDS: dict[str, Literal["session", "result", "error"]] = {
    "session": "session",
    "result": "result",
    "error": "error",
}


@dataclass(frozen=True, kw_only=True)
class CliEvent:
    """One thing the tool reported. `value` by kind: text/session/result/error -> str,
    tool -> the tool's name or call (as the preset's path finds it), usage -> a dict with
    some of `cost_usd`, `input_tokens`, `output_tokens`."""

    kind: Literal["text", "tool", "session", "usage", "result", "error"]
    value: Any


@dataclass(frozen=True, kw_only=True)
class CliSummary:
    """What a whole run of the tool reported; None where it reported nothing."""

    session_id: str | None = None
    """The last session id reported: what an interrupted step resumes with."""
    result: str | None = None
    """The last final answer reported."""
    cost_usd: float | None = None
    """The sum of the costs reported."""
    input_tokens: int | None = None
    output_tokens: int | None = None
    tools: int = 0
    """How many tool calls were reported."""
    error: str | None = None
    """The errors reported (a repeat in a row once), joined with '; '."""
    text: str = ""
    """All text, in order (capped at `max_text` characters)."""
    text_truncated: bool = False

    @property
    def output(self) -> str:
        """The step's output: the reported result, else all the text."""
        return self.result if self.result is not None else self.text


class StreamParser:
    """Feed it the tool's stdout one line at a time; read `summary` at the end."""

    def __init__(self, preset: PresetSpec, *, max_text: int = DEFAULT_MAX_TEXT) -> None:
        self._jsonl = preset.output == "jsonl"
        self._rules = tuple(preset.events)
        self._max_text = max_text
        self._text: list[str] = []
        self._text_size = 0
        self._truncated = False
        self._session: str | None = None
        self._result: str | None = None
        self._usage: dict[str, float] = {}
        self._tools = 0
        self._errors: list[str] = []

    def feed(self, line: str) -> list[CliEvent]:
        """The events of one stdout line (with or without its newline)."""
        line = line.rstrip("\r\n")
        if not self._jsonl:
            return self._record([CliEvent(kind="text", value=line + "\n")])
        if not line.strip():
            return []
        try:
            data: Any = json.loads(line)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            return self._record([CliEvent(kind="text", value=line + "\n")])
        events: list[CliEvent] = []
        for rule in self._rules:
            if _matches(rule, data):
                events.extend(_extract(rule, data))
        return self._record(events)

    @property
    def summary(self) -> CliSummary:
        usage = self._usage
        return CliSummary(
            session_id=self._session,
            result=self._result,
            cost_usd=usage.get("cost_usd"),
            input_tokens=_int_or_none(usage.get("input_tokens")),
            output_tokens=_int_or_none(usage.get("output_tokens")),
            tools=self._tools,
            error="; ".join(self._errors) if self._errors else None,
            text="".join(self._text),
            text_truncated=self._truncated,
        )

    def _record(self, events: list[CliEvent]) -> list[CliEvent]:
        for event in events:
            if event.kind == "text":
                self._keep_text(event.value)
            elif event.kind == "tool":
                self._tools += 1
            elif event.kind == "session":
                self._session = event.value
            elif event.kind == "result":
                self._result = event.value
            elif event.kind == "error":
                if not self._errors or self._errors[-1] != event.value:
                    self._errors.append(event.value)  # a tool may say it twice in a row
            else:
                for key, amount in event.value.items():
                    self._usage[key] = self._usage.get(key, 0) + amount
        return events

    def _keep_text(self, text: str) -> None:
        room = self._max_text - self._text_size
        if len(text) > room:
            self._truncated = True
            text = text[: max(room, 0)]
        if text:
            self._text.append(text)
            self._text_size += len(text)


def _matches(rule: EventRule, data: dict[str, Any]) -> bool:
    return all(
        any(_equal(found, expected) for found in select(data, path))
        for path, expected in rule.match.items()
    )


def _equal(found: Any, expected: str | bool | int) -> bool:
    """JSON-typed equality: `true` is not `1`, `"1"` is not `1`."""
    if isinstance(expected, bool) or isinstance(found, bool):
        return isinstance(found, bool) and isinstance(expected, bool) and found is expected
    if isinstance(expected, int):
        return isinstance(found, int | float) and found == expected
    return isinstance(found, str) and found == expected


def _extract(rule: EventRule, data: dict[str, Any]) -> list[CliEvent]:
    events: list[CliEvent] = []
    usage: dict[str, float] = {}
    for name, path in extractors(rule):
        values = select(data, path)
        if name in _USAGE_KEYS:
            numbers = [value for value in values if _is_number(value)]
            if numbers:
                usage[name] = sum(numbers)
        elif name == "text":
            events.extend(_texts(values, delta=data.get("delta") is True))
        elif name == "tool":
            events.extend(CliEvent(kind="tool", value=value) for value in values)
        elif values:
            events.append(CliEvent(kind=_SCALAR_KINDS[name], value=_joined(values)))
    if usage:
        events.append(CliEvent(kind="usage", value=usage))
    return events


def _texts(values: list[Any], *, delta: bool) -> list[CliEvent]:
    events: list[CliEvent] = []
    for value in values:
        text = _as_str(value)
        if not text:
            continue
        if not delta and not text.endswith("\n"):
            text += "\n"
        events.append(CliEvent(kind="text", value=text))
    return events


def _joined(values: list[Any]) -> str:
    return "\n".join(_as_str(value) for value in values)


def _as_str(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _int_or_none(value: float | None) -> int | None:
    return None if value is None else int(value)
