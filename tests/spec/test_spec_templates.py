"""Templates: rendering, native evaluation for when/foreach, truthiness, references."""

from __future__ import annotations

from typing import Any

import pytest
from jinja2 import TemplateSyntaxError

from agentmill.errors import RunFailure, TemplateRenderError
from agentmill.spec.templates import (
    Reference,
    evaluate,
    is_truthy,
    references,
    render,
    template_env,
)

CONTEXT: dict[str, Any] = {
    "inputs": {"diff": "+a\n-b", "n": 3},
    "steps": {
        "plan": {"output": {"files": ["a.py", "b.py"], "items": 2}, "skipped": False},
        "sign-off": {"output": "yes", "skipped": False},
        "update": {"output": "done", "skipped": False},
        "late": {"output": None, "skipped": True},
    },
    "item": "a.py",
    "index": 0,
}


def test_render_text() -> None:
    text = render("Review:\n{{ inputs.diff }}\n{{ steps['sign-off'].output }}\n", CONTEXT)
    assert text == "Review:\n+a\n-b\nyes\n"


def test_render_does_not_escape_html() -> None:
    assert render("{{ x }}", {"x": "<b>&</b>"}) == "<b>&</b>"


def test_dots_read_keys_before_dict_methods() -> None:
    assert render("{{ steps.update.output }} {{ steps.plan.output.items }}", CONTEXT) == "done 2"


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{ inputs.dif }}", "'inputs.dif' is undefined: no 'dif' (available: diff, n)"),
        (
            "{{ steps.style.output }}",
            "'steps.style.output' is undefined: no 'style'"
            " (available: plan, sign-off, update, late)",
        ),
        (
            "{{ steps.plan.outptu }}",
            "'steps.plan.outptu' is undefined: no 'outptu' (available: output, skipped)",
        ),
        (
            "{{ steps.plan.output.files[5] }}",
            "'steps.plan.output.files[5]' is undefined: index 5 is out of range for a list of 2",
        ),
        (
            "{{ nothing }}",
            "'nothing' is undefined: no 'nothing' (available: inputs, steps, item, index)",
        ),
    ],
)
def test_undefined_variables_are_named(template: str, message: str) -> None:
    with pytest.raises(TemplateRenderError) as info:
        render(template, CONTEXT)
    assert str(info.value) == message
    assert isinstance(info.value, RunFailure)

    with pytest.raises(TemplateRenderError) as info:
        evaluate(template, CONTEXT)
    assert str(info.value) == message


def test_undefined_local_attribute_falls_back_to_jinja_message() -> None:
    with pytest.raises(
        TemplateRenderError, match="undefined variable: 'str object' has no attribute 'nope'"
    ):
        render("{% for f in steps.plan.output.files %}{{ f.nope }}{% endfor %}", CONTEXT)


def test_undefined_error_carries_the_variable() -> None:
    with pytest.raises(TemplateRenderError) as info:
        render("{{ inputs.dif }}", CONTEXT)
    assert info.value.variable == "inputs.dif"


@pytest.mark.parametrize(
    "template",
    ["{{ ().__class__.__bases__ }}", "{{ inputs.diff.__class__.__mro__ }}", "{{ 1 / 0 }}", "{{ x"],
)
def test_unsafe_or_failing_templates_raise_render_errors(template: str) -> None:
    with pytest.raises(TemplateRenderError):
        render(template, CONTEXT)


def test_render_syntax_error_names_the_line() -> None:
    with pytest.raises(TemplateRenderError, match="template syntax error on line 2"):
        render("ok\n{% if %}", CONTEXT)


@pytest.mark.parametrize(
    ("template", "value"),
    [
        ("{{ steps.plan.output.files }}", ["a.py", "b.py"]),
        ("  {{ steps.plan.output.files }}\n", ["a.py", "b.py"]),
        ("{{- inputs.n -}}", 3),
        ("{{ inputs.n > 2 }}", True),
        ("{{ steps.late.skipped }}", True),
        ("{{ steps.late.output }}", None),
        ("{{ -inputs.n }}", -3),
        ("{{ inputs.n }} files", "3 files"),
        ("{{ inputs.n }}{{ inputs.n }}", "33"),
        ("no template", "no template"),
        ("{{ '}}' }}", "}}"),
    ],
)
def test_evaluate_gives_native_values_for_one_expression(template: str, value: Any) -> None:
    assert evaluate(template, CONTEXT) == value


def test_evaluate_failures() -> None:
    with pytest.raises(TemplateRenderError, match="template failed"):
        evaluate("{{ inputs.n / 0 }}", CONTEXT)
    with pytest.raises(TemplateRenderError, match=r"'inputs\.x' is undefined"):
        evaluate("{{ inputs.x }}", CONTEXT)


@pytest.mark.parametrize(
    ("value", "truthy"),
    [
        (True, True),
        (False, False),
        (None, False),
        ("yes", True),
        ("anything", True),
        ("false", False),
        (" False\n", False),
        ("NO", False),
        ("0", False),
        ("", False),
        ("  ", False),
        (0, False),
        (1, True),
        ([], False),
        (["a"], True),
    ],
)
def test_is_truthy(value: Any, truthy: bool) -> None:
    assert is_truthy(value) is truthy


def test_references_in_every_form() -> None:
    refs = references(
        "{{ inputs.diff }}\n"
        "{{ inputs['n'] }} {{ steps['sign-off'].output }}\n"
        "{{ steps.plan.output.files[0] | upper }} {{ item }}\n"
        "{% for f in steps.plan.output.files %}{{ f.name }}{{ loop.index }}{% endfor %}\n"
        "{% set total = 3 %}{{ total }} {{ steps[inputs.diff].output }} {{ range(2) }}"
    )
    assert [(str(ref), ref.lineno) for ref in refs] == [
        ("inputs.diff", 1),
        ("inputs.n", 2),
        ("steps['sign-off'].output", 2),
        ("steps.plan.output.files[0]", 3),
        ("item", 3),
        ("steps.plan.output.files", 4),
        ("steps", 5),
        ("inputs.diff", 5),
    ]
    assert refs[2] == Reference(root="steps", path=("sign-off", "output"), lineno=2)


def test_references_raise_syntax_errors_with_their_line() -> None:
    with pytest.raises(TemplateSyntaxError) as info:
        references("line one\n{{ x | nosuchfilter }}")
    assert info.value.lineno == 2


def test_one_environment_is_shared() -> None:
    env = template_env()
    assert env is template_env()
    assert env.keep_trailing_newline
    assert not env.autoescape


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        ("{% if x %}" * 5000 + "y" + "{% endif %}" * 5000, "more levels than Jinja can parse"),
        ("{% if x %}" * 120 + "y" + "{% endif %}" * 120, "Python: too many levels of indentation"),
        ("{% for i in x %}" * 25 + "y" + "{% endfor %}" * 25, "Python: too many statically nested"),
        ("{{ " + "(" * 500 + "x" + ")" * 500 + " }}", "more levels than Jinja can parse"),
        ("{{ x" + "|upper" * 3000 + " }}", "more levels than Jinja can parse"),
    ],
    ids=["if-5000", "if-120", "for-25", "parentheses", "filters"],
)
def test_a_template_nested_too_deeply_is_a_syntax_error(template: str, reason: str) -> None:
    with pytest.raises(TemplateSyntaxError) as info:
        references(template)
    assert info.value.message is not None
    assert info.value.message.startswith(f"the template nests too deeply ({reason}")
    with pytest.raises(TemplateRenderError, match="the template nests too deeply"):
        render(template, {"x": [1]})
    with pytest.raises(TemplateRenderError, match="the template nests too deeply"):
        evaluate(template, {"x": [1]})


def test_a_template_that_recurses_at_render_time_is_a_render_error() -> None:
    """A macro that calls itself compiles (validate passes it) and recurses only when the
    step renders it: a template error of the step, not an internal error."""
    template = "{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}"
    references(template)
    with pytest.raises(TemplateRenderError, match="recurses too deeply"):
        render(template, {})
    with pytest.raises(TemplateRenderError, match="recurses too deeply"):
        evaluate("{% macro m() %}{{ m() }}{% endmacro %}x{{ m() }}", {})
