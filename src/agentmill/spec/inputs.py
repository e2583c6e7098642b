"""Workflow inputs: defaults applied, values from the CLI parsed and values from the API checked.

A string is parsed into the declared type (`--input n=3` gives the integer 3, `--input
tags='["a"]'` a list). A value that arrives already typed (a JSON body) is checked but not
converted: the number 3 for a string input, or true for an integer input, is reported.
Lists and objects nest at most `MAX_INPUT_DEPTH` levels: deeper values are refused here,
before anything stores, renders or serializes them recursively.
"""

from __future__ import annotations

import copy
import difflib
import json
import math
import re
import reprlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from agentmill.errors import InputError
from agentmill.spec.models import InputSpec, InputType, WorkflowSpec

__all__ = ["MAX_INPUT_DEPTH", "coerce_inputs", "type_problem"]

MAX_INPUT_DEPTH = 100
"""Levels of lists and objects an input may nest (`[[1]]` is 2)."""

_INTEGER = re.compile(r"^[+-]?\d+$")
_TRUE = frozenset({"true", "yes", "1"})
_FALSE = frozenset({"false", "no", "0"})
_NAMES: dict[str, str] = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "list": "a list",
    "object": "an object",
}
_EXAMPLES = {
    "list": """'["a", "b"]'""",
    "object": """'{"key": "value"}'""",
}


def coerce_inputs(
    workflow: WorkflowSpec, raw: Mapping[str, Any], *, name: str | None = None
) -> dict[str, Any]:
    """The inputs of a run: `raw` values parsed or checked, then defaults for the rest.

    Raises InputError listing every missing, unknown and ill-typed input at once;
    `name` (the workflow's) makes the message more precise.
    """
    problems: list[str] = []
    declared = workflow.inputs
    for key in raw:
        if key not in declared:
            close = difflib.get_close_matches(key, list(declared), n=1)
            problems.append(
                f"unknown input '{key}'" + (f" (did you mean '{close[0]}'?)" if close else "")
            )
    values: dict[str, Any] = {}
    for key, spec in declared.items():
        if key in raw:
            try:
                values[key] = _coerce(spec, raw[key])
            except ValueError as exc:
                problems.append(f"input '{key}' {exc}")
        elif spec.required:
            problems.append(f"missing required input '{key}' ({spec.type})")
        else:
            values[key] = copy.deepcopy(spec.default)
    if problems:
        raise InputError(_message(problems, declared, name))
    return values


def type_problem(kind: InputType, value: Any) -> str | None:
    """Why an already typed value does not fit `kind` ("must be an integer, got 'x'"), or None."""
    fits = {
        "string": lambda: isinstance(value, str),
        "integer": lambda: isinstance(value, int) and not isinstance(value, bool),
        "number": lambda: _is_number(value),
        "boolean": lambda: isinstance(value, bool),
        "list": lambda: isinstance(value, list),
        "object": lambda: isinstance(value, dict),
    }
    return None if fits[kind]() else _wrong(kind, value)


def _coerce(spec: InputSpec, value: Any) -> Any:
    if value is None and not spec.required and spec.default is None:
        return None
    if isinstance(value, str):
        value = _PARSERS[spec.type](value)
    elif (problem := type_problem(spec.type, value)) is not None:
        raise ValueError(problem)
    if spec.type in ("list", "object"):
        _check_json(value)
    return value


def _check_json(value: Any) -> None:
    """Lists and objects are stored as JSON: NaN and Infinity are not JSON."""
    if _nests_deeper(value, MAX_INPUT_DEPTH):
        raise ValueError(_TOO_DEEP)
    try:
        json.dumps(value, allow_nan=False)
    except ValueError:
        raise ValueError("must be plain JSON: NaN and Infinity are not allowed") from None


_TOO_DEEP = (
    f"is nested more than {MAX_INPUT_DEPTH} levels deep; "
    f"lists and objects may nest at most {MAX_INPUT_DEPTH} levels"
)


def _nests_deeper(value: Any, limit: int) -> bool:
    """Whether lists and dicts in `value` nest more than `limit` levels (walked, not recursed)."""
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, list | dict):
            if depth > limit:
                return True
            children: Iterable[Any] = item.values() if isinstance(item, dict) else item
            pending.extend((child, depth + 1) for child in children)
    return False


def _parse_integer(text: str) -> int:
    if not _INTEGER.match(text.strip()):
        raise ValueError(_wrong("integer", text))
    return int(text)


def _parse_number(text: str) -> int | float:
    if _INTEGER.match(text.strip()):
        return int(text)
    try:
        number = float(text)
    except ValueError:
        raise ValueError(_wrong("number", text)) from None
    if not math.isfinite(number):
        raise ValueError(_wrong("number", text))
    return number


def _parse_boolean(text: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE or word in _FALSE:
        return word in _TRUE
    raise ValueError(f"must be true/false, yes/no or 1/0, got {text!r}")


def _parser_of_json(kind: InputType, expected: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = None
        except RecursionError:  # the decoder recurses per level
            raise ValueError(_TOO_DEEP) from None
        if not isinstance(value, expected):
            raise ValueError(
                f"must be {_NAMES[kind]} in JSON, e.g. {_EXAMPLES[kind]}, got {text!r}"
            )
        return value

    return parse


_PARSERS: dict[str, Callable[[str], Any]] = {
    "string": str,
    "integer": _parse_integer,
    "number": _parse_number,
    "boolean": _parse_boolean,
    "list": _parser_of_json("list", list),
    "object": _parser_of_json("object", dict),
}


def _is_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False


def _short_repr() -> reprlib.Repr:
    short = reprlib.Repr()
    short.maxlevel, short.maxlist, short.maxdict = 3, 5, 5
    short.maxstring, short.maxother, short.maxlong = 80, 80, 40
    return short


_SHORT = _short_repr()


def _wrong(kind: str, value: Any) -> str:
    # A bounded repr: YAML aliases can make a small file stand for an enormous value.
    shown = "null" if value is None else _SHORT.repr(value)
    return f"must be {_NAMES[kind]}, got {shown}"


def _message(problems: list[str], declared: Mapping[str, InputSpec], name: str | None) -> str:
    count = len(problems)
    of = f"workflow '{name}'" if name else "the workflow"
    lines = [f"{count} problem{'s' if count != 1 else ''} with the inputs of {of}:"]
    lines += [f"  - {problem}" for problem in problems]
    if declared:
        described = ", ".join(f"{key} ({_describe(spec)})" for key, spec in declared.items())
        lines.append(f"declared inputs: {described}")
    else:
        lines.append("this workflow takes no inputs")
    lines.append("pass inputs as --input name=value (lists and objects as JSON)")
    return "\n".join(lines)


def _describe(spec: InputSpec) -> str:
    if spec.required:
        return f"{spec.type}, required"
    default = spec.default
    shown = _SHORT.repr(default) if isinstance(default, list | dict) else json.dumps(default)
    return f"{spec.type}, default {shown}"
