"""Template checks: syntax errors at their line and the variables templates may use."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from agentmill.errors import ConfigError, ConfigProblem
from agentmill.spec.loader import load_project

AGENTS = """\
agents:
  reviewer: {}
  writer: {}
"""


def problems_of(tmp_path: Path, text: str) -> list[ConfigProblem]:
    path = tmp_path / "agentmill.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_project(path)
    assert all(problem.file == str(path) for problem in info.value.problems)
    return info.value.problems


def found(tmp_path: Path, text: str) -> list[tuple[int | None, str, str | None]]:
    return [(p.line, p.message, p.hint) for p in problems_of(tmp_path, text)]


def test_template_syntax_error_at_its_exact_line(tmp_path: Path) -> None:
    problems = found(
        tmp_path,
        AGENTS
        + """\
workflows:
  w:
    steps:
      - id: a
        agent: reviewer
        prompt: |
          first line
          {{ inputs.x }
      - {id: b, agent: reviewer, prompt: "{{ inputs.x | nosuchfilter }}"}
""",
    )
    assert [(line, message) for line, message, _ in problems] == [
        (11, "template error in the prompt of step 'a': unexpected '}'"),
        (12, "template error in the prompt of step 'b': No filter named 'nosuchfilter'."),
    ]
    assert problems[0][2] == "templates use Jinja2: {{ expression }}, {% if ... %}...{% endif %}"


def test_unknown_inputs_in_templates(tmp_path: Path) -> None:
    problems = found(
        tmp_path,
        AGENTS
        + """\
workflows:
  w:
    inputs: {diff: {type: string}}
    steps:
      - id: a
        agent: reviewer
        prompt: |
          {{ inputs.diff }} {{ inputs['diff'] }}
          {{ inputs.dif }}
          {{ inputs['other'] }}
  none:
    steps:
      - {id: a, agent: reviewer, prompt: "{{ inputs.x }}"}
""",
    )
    assert problems == [
        (
            12,
            "the prompt of step 'a' uses unknown input 'dif'",
            "did you mean 'diff'? declared inputs: diff",
        ),
        (13, "the prompt of step 'a' uses unknown input 'other'", "declared inputs: diff"),
        (
            16,
            "the prompt of step 'a' uses unknown input 'x'",
            "declare it in the workflow: inputs: {x: {type: string}}",
        ),
    ]


def test_step_references(tmp_path: Path) -> None:
    problems = found(
        tmp_path,
        AGENTS
        + """\
workflows:
  w:
    steps:
      - {id: plan, agent: reviewer, prompt: x}
      - {id: sign-off, agent: reviewer, prompt: x, needs: [plan]}
      - id: act
        agent: writer
        needs: [sign-off]
        when: "{{ steps['sign-off'].output and not steps.plan.skipped }}"
        prompt: |
          {{ steps.plan.output }}
          {{ steps.plam.output }}
          {{ steps.other.output }}
          {{ steps.act.output }}
          {{ steps.plan.outptu }}
      - id: other
        agent: writer
        prompt: x
""",
    )
    assert problems == [
        (
            15,
            "the prompt of step 'act' refers to unknown step 'plam'",
            "did you mean 'plan'? steps in workflow 'w': plan, sign-off, act, other",
        ),
        (
            16,
            "the prompt of step 'act' refers to step 'other', which is not upstream of it",
            "add it to the needs of step 'act': needs: [sign-off, other]",
        ),
        (
            17,
            "the prompt of step 'act' refers to its own step",
            "a step can only read the steps it needs",
        ),
        (
            18,
            "the prompt of step 'act' uses unknown field 'outptu' of step 'plan'",
            "did you mean 'output'? a step has: output, skipped, usage",
        ),
    ]


def test_item_and_index_only_in_foreach_prompts(tmp_path: Path) -> None:
    problems = found(
        tmp_path,
        AGENTS
        + """\
workflows:
  w:
    steps:
      - {id: files, agent: reviewer, prompt: list the files}
      - id: each
        agent: writer
        needs: [files]
        foreach: "{{ steps.files.output }}"
        when: "{{ item }}"
        prompt: "{{ index }}: {{ item }}"
      - id: plain
        agent: writer
        prompt: "{{ item }}{% for item in [1, 2] %}{{ item }}{% endfor %}"
      - id: self
        agent: writer
        foreach: "{{ index }}"
        prompt: x
""",
    )
    assert problems == [
        (
            12,
            "'when' of step 'each' uses 'item', which is not defined there",
            "'when' is evaluated once per step, before any foreach item",
        ),
        (
            16,
            "the prompt of step 'plain' uses 'item', which is not defined there",
            "only steps with foreach have 'item' and 'index'",
        ),
        (
            19,
            "'foreach' of step 'self' uses 'index', which is not defined there",
            "'foreach' itself is evaluated before there are items",
        ),
    ]


def test_unknown_variables(tmp_path: Path) -> None:
    problems = found(
        tmp_path,
        AGENTS
        + """\
workflows:
  w:
    steps:
      - {id: a, agent: reviewer, prompt: "{{ input.x }} {% set y = 1 %}{{ y }} {{ range(2) }}"}
""",
    )
    assert problems == [
        (
            7,
            "the prompt of step 'a' uses unknown variable 'input'",
            "did you mean 'inputs'? templates can use: inputs, steps",
        )
    ]


def test_workflow_outputs_may_use_any_step(tmp_path: Path) -> None:
    problems = found(
        tmp_path,
        AGENTS
        + """\
workflows:
  w:
    steps:
      - {id: a, agent: reviewer, prompt: x}
      - {id: b, agent: reviewer, prompt: x}
    outputs:
      both: "{{ steps.a.output }} {{ steps.b.output }}"
      bad: "{{ steps.c.output }} {{ item }}"
""",
    )
    assert [(line, message) for line, message, _ in problems] == [
        (11, "output 'bad' of workflow 'w' refers to unknown step 'c'"),
        (11, "output 'bad' of workflow 'w' uses 'item', which is not defined there"),
    ]


def test_the_same_reference_is_reported_once_per_line(tmp_path: Path) -> None:
    problems = found(
        tmp_path,
        AGENTS
        + "workflows:\n  w:\n    steps:\n"
        + "      - {id: a, agent: reviewer, prompt: '{{ inputs.x }}{{ inputs.x }}'}\n",
    )
    assert len(problems) == 1
