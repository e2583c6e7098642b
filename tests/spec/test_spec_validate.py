"""Cross-reference checks: step ids, needs, cycles, agents, models and template variables."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from agentmill.errors import ConfigError, ConfigProblem
from agentmill.spec.loader import load_project
from agentmill.spec.validate import did_you_mean, model_string_problem, validate_project

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


def test_valid_file_has_no_problems(tmp_path: Path) -> None:
    path = tmp_path / "agentmill.yaml"
    path.write_text(
        AGENTS + "workflows:\n  w:\n    steps:\n      - {id: a, agent: reviewer, prompt: hi}\n"
    )
    assert validate_project(load_project(path)) == []


def test_duplicate_step_ids(tmp_path: Path) -> None:
    assert found(
        tmp_path,
        AGENTS
        + """\
workflows:
  w:
    steps:
      - {id: a, agent: reviewer, prompt: x}
      - {id: b, agent: reviewer, prompt: x}
      - id: a
        agent: reviewer
        prompt: x
""",
    ) == [
        (
            9,
            "duplicate step id 'a' in workflow 'w'",
            "step ids must be unique within a workflow; the first is at line 7",
        )
    ]


def test_needs_naming_unknown_steps(tmp_path: Path) -> None:
    assert found(
        tmp_path,
        AGENTS
        + """\
workflows:
  w:
    steps:
      - {id: security, agent: reviewer, prompt: x}
      - id: summary
        agent: reviewer
        prompt: x
        needs:
          - securty
          - other
""",
    ) == [
        (
            12,
            "step 'summary' needs unknown step 'securty'",
            "did you mean 'security'? steps in workflow 'w': security, summary",
        ),
        (
            13,
            "step 'summary' needs unknown step 'other'",
            "steps in workflow 'w': security, summary",
        ),
    ]


def test_cycles_are_named(tmp_path: Path) -> None:
    problems = found(
        tmp_path,
        AGENTS
        + """\
workflows:
  w:
    steps:
      - {id: a, agent: reviewer, prompt: x, needs: [c]}
      - {id: b, agent: reviewer, prompt: x, needs: [a]}
      - {id: c, agent: reviewer, prompt: x, needs: [start, b]}
      - {id: start, agent: reviewer, prompt: x}
      - {id: self, agent: reviewer, prompt: x, needs: [self]}
""",
    )
    hint = "each arrow means 'needs'; remove one of these needs"
    assert problems == [
        (7, "dependency cycle in workflow 'w': a -> c -> b -> a", hint),
        (11, "dependency cycle in workflow 'w': self -> self", hint),
    ]


def test_unknown_agent(tmp_path: Path) -> None:
    text = """\
workflows:
  w:
    steps:
      - id: a
        agent: reviwer
        prompt: x
"""
    assert found(tmp_path, AGENTS + text) == [
        (
            8,
            "step 'a' uses unknown agent 'reviwer'",
            "did you mean 'reviewer'? known agents: reviewer, writer",
        )
    ]
    assert found(tmp_path, text) == [
        (5, "step 'a' uses unknown agent 'reviwer'", "no agents are defined")
    ]


def test_agent_models(tmp_path: Path) -> None:
    problems = found(
        tmp_path,
        """\
models:
  smart: anthropic:claude-sonnet-4-5
  endpoint: {name: llama3.2, base_url: http://127.0.0.1:11434/v1}
  broken: gpt-4o
agents:
  by-alias: {model: smart}
  by-endpoint: {model: endpoint}
  by-string: {model: "openai:gpt-4o"}
  implicit: {}
  local: {model: "local:smollm2"}
  typo: {model: smrt}
  provider: {model: "opneai:gpt-4o"}
  unknown-local: {model: "local:llama"}
  empty-name: {model: "openai:"}
""",
    )
    assert problems == [
        (
            4,
            "model 'broken': 'gpt-4o' is not a model string",
            "write provider:name, e.g. openai:gpt-4o",
        ),
        (
            11,
            "agent 'typo' uses unknown model 'smrt'",
            "did you mean 'smart'? use a name from 'models' (smart, endpoint, broken)"
            " or provider:name",
        ),
        (
            12,
            "agent 'provider' uses unknown model provider 'opneai' in 'opneai:gpt-4o'",
            "did you mean 'openai'? known providers: openai, anthropic, google-gla, google-vertex,"
            " google, groq, mistral, ollama, local, test",
        ),
        (
            13,
            "agent 'unknown-local' uses unknown local model 'local:llama'",
            "local models: local:smollm2",
        ),
        (14, "agent 'empty-name' uses 'openai:' is not a model string", problems[4][2]),
    ]


def test_default_alias_must_exist_when_named(tmp_path: Path) -> None:
    [(line, message, _)] = found(tmp_path, "agents:\n  a: {model: default}\n")
    assert (line, message) == (2, "agent 'a' uses unknown model 'default'")


@pytest.mark.parametrize(
    ("model", "problem"),
    [
        ("openai:gpt-4o", None),
        ("google-gla:gemini-2.0-flash", None),
        ("test:anything", None),
        ("gpt-4o", "'gpt-4o' is not a model string"),
        ("foo:bar", "unknown model provider 'foo' in 'foo:bar'"),
        ("local:big", "unknown local model 'local:big'"),
    ],
)
def test_model_string_problem(model: str, problem: str | None) -> None:
    result = model_string_problem(model)
    assert (result[0] if result else None) == problem


def test_structured_output_must_be_an_object_schema(tmp_path: Path) -> None:
    problems = found(
        tmp_path,
        """\
agents:
  good: {output: {type: object, properties: {ok: {type: boolean}}}}
  bad:
    output: {type: array, items: {type: string}}
""",
    )
    assert [(line, message) for line, message, _ in problems] == [
        (4, "the output schema of agent 'bad' must be a JSON schema of type: object")
    ]


def test_concurrency_needs_foreach(tmp_path: Path) -> None:
    [(line, message, _)] = found(
        tmp_path,
        AGENTS
        + """\
workflows:
  w:
    steps:
      - id: a
        agent: reviewer
        prompt: x
        concurrency: 3
""",
    )
    assert (line, message) == (10, "step 'a' sets concurrency without foreach")


def test_input_defaults_must_match_their_type(tmp_path: Path) -> None:
    problems = found(
        tmp_path,
        AGENTS
        + """\
workflows:
  w:
    inputs:
      n: {type: integer, default: many}
      ok: {type: list, default: []}
      nothing: {type: string, default: null}
    steps:
      - {id: a, agent: reviewer, prompt: x}
""",
    )
    assert problems == [(7, "the default of input 'n' must be an integer, got 'many'", None)]


def test_did_you_mean() -> None:
    assert did_you_mean("promt", ["prompt", "agent"]) == "did you mean 'prompt'?"
    assert did_you_mean("zzz", ["prompt", "agent"]) is None
