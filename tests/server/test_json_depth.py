"""The JSON nesting scan shared by every request body: what counts as depth, and what not."""

from __future__ import annotations

import json

import pytest

from agentmill.server.limits import MAX_JSON_DEPTH, refuse_deep_json
from agentmill.server.problems import ApiProblem
from agentmill.spec.inputs import MAX_INPUT_DEPTH


def test_nesting_up_to_the_limit_passes_and_one_more_is_refused() -> None:
    refuse_deep_json(b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH)
    mixed = b'{"a": [' * (MAX_JSON_DEPTH // 2) + b"1" + b"]}" * (MAX_JSON_DEPTH // 2)
    refuse_deep_json(mixed)
    with pytest.raises(ApiProblem) as refused:
        refuse_deep_json(b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1))
    assert refused.value.status == 400
    assert refused.value.slug == "too-deep"


def test_a_request_may_carry_an_input_nested_as_deep_as_inputs_may_nest() -> None:
    deepest = b"[" * MAX_INPUT_DEPTH + b"]" * MAX_INPUT_DEPTH
    refuse_deep_json(b'{"workflow": "w", "inputs": {"x": ' + deepest + b"}}")


def test_brackets_inside_strings_do_not_count() -> None:
    text = json.dumps({"title": "[" * 500, "quoted": '\\"{{{' * 100, "list": [[1]]})
    refuse_deep_json(text.encode())


def test_unterminated_strings_and_invalid_json_are_left_to_the_parser() -> None:
    refuse_deep_json(b'"' + b"[" * 1000)  # all inside one (unterminated) string
    refuse_deep_json(b'"\\"' * 100_000 + b"\\")  # escaped quotes to the end: still linear
    with pytest.raises(ApiProblem):
        refuse_deep_json(b'"x"' + b"[" * 1000)  # brackets after the string count
