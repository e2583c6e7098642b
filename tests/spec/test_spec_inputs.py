"""Workflow inputs: defaults, parsing of CLI strings, checking of typed values."""

from __future__ import annotations

from typing import Any

import pytest

from agentmill.errors import InputError
from agentmill.spec.inputs import coerce_inputs, type_problem
from agentmill.spec.models import InputSpec, StepSpec, WorkflowSpec

STEP = StepSpec(id="a", agent="r", prompt="x")


def workflow(**inputs: dict[str, Any]) -> WorkflowSpec:
    return WorkflowSpec(
        inputs={name: InputSpec.model_validate(spec) for name, spec in inputs.items()},
        steps=[STEP],
    )


REVIEW = workflow(
    diff={"type": "string"},
    depth={"type": "integer", "default": 2},
    tags={"type": "list", "default": []},
    strict={"type": "boolean", "default": False},
)


def test_defaults_fill_what_is_not_given() -> None:
    assert coerce_inputs(REVIEW, {"diff": "x"}) == {
        "diff": "x",
        "depth": 2,
        "tags": [],
        "strict": False,
    }


def test_defaults_are_copies() -> None:
    values = coerce_inputs(REVIEW, {"diff": "x"})
    values["tags"].append("mutated")
    assert coerce_inputs(REVIEW, {"diff": "x"})["tags"] == []


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(InputError) as info:
        coerce_inputs(REVIEW, {"dif": "x", "depth": "deep", "strict": "maybe"}, name="review")

    assert str(info.value) == "\n".join(
        [
            "4 problems with the inputs of workflow 'review':",
            "  - unknown input 'dif' (did you mean 'diff'?)",
            "  - missing required input 'diff' (string)",
            "  - input 'depth' must be an integer, got 'deep'",
            "  - input 'strict' must be true/false, yes/no or 1/0, got 'maybe'",
            "declared inputs: diff (string, required), depth (integer, default 2),"
            " tags (list, default []), strict (boolean, default false)",
            "pass inputs as --input name=value (lists and objects as JSON)",
        ]
    )


def test_workflow_without_inputs() -> None:
    with pytest.raises(InputError) as info:
        coerce_inputs(workflow(), {"x": "1"})
    assert str(info.value).splitlines() == [
        "1 problem with the inputs of the workflow:",
        "  - unknown input 'x'",
        "this workflow takes no inputs",
        "pass inputs as --input name=value (lists and objects as JSON)",
    ]


@pytest.mark.parametrize(
    ("kind", "text", "value"),
    [
        ("string", " kept as is ", " kept as is "),
        ("integer", "42", 42),
        ("integer", " -7 ", -7),
        ("number", "3", 3),
        ("number", "2.5", 2.5),
        ("number", "1e3", 1000.0),
        ("boolean", "true", True),
        ("boolean", "Yes", True),
        ("boolean", "1", True),
        ("boolean", "FALSE", False),
        ("boolean", "no", False),
        ("boolean", "0", False),
        ("list", '["a", 1]', ["a", 1]),
        ("object", '{"k": [1]}', {"k": [1]}),
    ],
)
def test_strings_are_parsed(kind: str, text: str, value: Any) -> None:
    assert coerce_inputs(workflow(x={"type": kind}), {"x": text}) == {"x": value}


@pytest.mark.parametrize(
    ("kind", "text", "problem"),
    [
        ("integer", "2.5", "input 'x' must be an integer, got '2.5'"),
        ("number", "many", "input 'x' must be a number, got 'many'"),
        ("number", "nan", "input 'x' must be a number, got 'nan'"),
        ("boolean", "y", "input 'x' must be true/false, yes/no or 1/0, got 'y'"),
        ("list", "a,b", """input 'x' must be a list in JSON, e.g. '["a", "b"]', got 'a,b'"""),
        (
            "list",
            '{"a": 1}',
            """input 'x' must be a list in JSON, e.g. '["a", "b"]', got '{"a": 1}'""",
        ),
        (
            "object",
            "[]",
            """input 'x' must be an object in JSON, e.g. '{"key": "value"}', got '[]'""",
        ),
    ],
)
def test_strings_that_do_not_parse(kind: str, text: str, problem: str) -> None:
    with pytest.raises(InputError) as info:
        coerce_inputs(workflow(x={"type": kind}), {"x": text})
    assert f"  - {problem}\n" in str(info.value)


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("string", "text"),
        ("integer", 3),
        ("number", 3),
        ("number", 2.5),
        ("boolean", False),
        ("list", [1, 2]),
        ("object", {"a": 1}),
    ],
)
def test_typed_values_are_accepted(kind: str, value: Any) -> None:
    assert coerce_inputs(workflow(x={"type": kind}), {"x": value}) == {"x": value}


@pytest.mark.parametrize(
    ("kind", "value", "problem"),
    [
        ("string", 3, "must be a string, got 3"),
        ("integer", True, "must be an integer, got True"),
        ("integer", 2.0, "must be an integer, got 2.0"),
        ("number", False, "must be a number, got False"),
        ("number", float("inf"), "must be a number, got inf"),
        ("boolean", 1, "must be true or false, got 1"),
        ("list", {"a": 1}, "must be a list, got {'a': 1}"),
        ("object", [1], "must be an object, got [1]"),
        ("string", None, "must be a string, got null"),
    ],
)
def test_typed_values_are_checked_not_converted(kind: Any, value: Any, problem: str) -> None:
    assert type_problem(kind, value) == problem
    with pytest.raises(InputError, match="input 'x' must be"):
        coerce_inputs(workflow(x={"type": kind}), {"x": value})


def test_null_is_accepted_for_an_input_whose_default_is_null() -> None:
    optional = workflow(note={"type": "string", "default": None})
    assert coerce_inputs(optional, {"note": None}) == {"note": None}
    assert coerce_inputs(optional, {}) == {"note": None}


@pytest.mark.parametrize(
    ("kind", "value", "message"),
    [
        ("list", [float("nan")], "must be plain JSON: NaN and Infinity are not allowed"),
        ("object", {"x": float("inf")}, "must be plain JSON: NaN and Infinity are not allowed"),
        ("list", "[NaN]", "must be plain JSON: NaN and Infinity are not allowed"),
        ("number", 10**400, "must be a number, got"),
    ],
)
def test_values_that_cannot_be_stored_are_input_errors(
    kind: str, value: object, message: str
) -> None:
    workflow = WorkflowSpec.model_validate(
        {"inputs": {"x": {"type": kind}}, "steps": [{"id": "s", "agent": "a", "prompt": "p"}]}
    )
    with pytest.raises(InputError) as info:
        coerce_inputs(workflow, {"x": value})
    assert message in str(info.value)


def _nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


@pytest.mark.parametrize(
    "raw",
    [
        "[" * 10_000 + "]" * 10_000,  # deeper than the JSON decoder recurses
        "[" * 101 + "]" * 101,
        {"k": _nested(100)},  # a typed value (an API body): 101 levels with the object
        _nested(5000),
    ],
    ids=["cli-10000", "cli-101", "typed-object-101", "typed-5000"],
)
def test_lists_and_objects_nest_at_most_100_levels(raw: Any) -> None:
    kinds = workflow(v={"type": "object" if isinstance(raw, dict) else "list"})
    with pytest.raises(InputError) as info:
        coerce_inputs(kinds, {"v": raw})
    assert "input 'v' is nested more than 100 levels deep" in str(info.value)


def test_a_list_nested_100_levels_is_accepted() -> None:
    kinds = workflow(v={"type": "list"})
    assert coerce_inputs(kinds, {"v": "[" * 100 + "]" * 100}) == {"v": _nested(100)}
    assert coerce_inputs(kinds, {"v": _nested(100)}) == {"v": _nested(100)}
