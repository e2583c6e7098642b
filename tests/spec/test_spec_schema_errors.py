"""Schema problems in plain words at file:line: unknown keys, wrong types, durations."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from agentmill.errors import ConfigError, ConfigProblem
from agentmill.spec.loader import load_project


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agentmill.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems_of(tmp_path: Path, text: str) -> list[ConfigProblem]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_project(path)
    assert all(problem.file == str(path) for problem in info.value.problems)
    return info.value.problems


def lines_of(tmp_path: Path, text: str) -> list[str]:
    """Each problem as `line: message`, the file name being the same for all."""
    return [f"{p.line}: {p.message}" for p in problems_of(tmp_path, text)]


def test_unknown_keys_get_typo_suggestions(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        """\
        agnets: {}
        agents:
          reviewer: {instruction: be brief}
        workflows:
          w:
            steps:
              - id: x
                agent: reviewer
                promt: hi
        """,
    )
    assert [(p.line, p.message, p.hint) for p in problems] == [
        (1, "unknown key 'agnets' at the top level", "did you mean 'agents'?"),
        (3, "unknown key 'instruction' in agent 'reviewer'", "did you mean 'instructions'?"),
        (7, "missing required key 'prompt' in step 'x'", problems[2].hint),
        (9, "unknown key 'promt' in step 'x'", "did you mean 'prompt'?"),
    ]


def test_unknown_key_without_a_close_match_lists_allowed_keys(tmp_path: Path) -> None:
    problem = problems_of(tmp_path, "workflows:\n  w:\n    timeout: 5m\n    steps: []\n")[0]
    assert (problem.line, problem.message) == (3, "unknown key 'timeout' in workflow 'w'")
    assert problem.hint == (
        "allowed keys: description, inputs, steps, concurrency, outputs, budget, guard"
    )


def test_features_not_built_yet_are_unknown_keys(tmp_path: Path) -> None:
    lines = lines_of(
        tmp_path,
        """\
        agents:
          coder: {runtime: shell, script: make}
        workflows:
          w:
            steps:
              - {id: a, agent: coder, prompt: hi}
        """,
    )
    assert lines == [
        "2: 'runtime' in agent 'coder' must be one of 'llm' or 'cli', got 'shell'",
        "2: unknown key 'script' in agent 'coder'",
    ]


def test_wrong_types_in_plain_words(tmp_path: Path) -> None:
    lines = lines_of(
        tmp_path,
        """\
        version: 2
        agents:
          reviewer:
            retries: two
            temperature: 3
            max_tokens: 0
          other: just a string
        workflows:
          w:
            inputs: {n: {type: int}}
            steps:
              - id: 1st
                agent: reviewer
                prompt: [a, list]
                needs: security
        """,
    )
    assert lines == [
        "1: 'version' must be 1, got 2",
        "4: 'retries' in agent 'reviewer' must be a whole number, got 'two'",
        "5: 'temperature' in agent 'reviewer' must be at most 2, got 3",
        "6: 'max_tokens' in agent 'reviewer' must be greater than 0, got 0",
        "7: agent 'other' must be a mapping, got 'just a string'",
        "10: 'type' in input 'n' must be one of 'string', 'integer', 'number', 'boolean',"
        " 'list' or 'object', got 'int'",
        "12: 'id' in step '1st' must start with a letter and use only letters, digits, '-'"
        " and '_', got '1st'",
        "14: 'prompt' in step '1st' must be a string, got a list",
        "15: 'needs' in step '1st' must be a list, got 'security'",
    ]


def test_bad_durations(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        """\
        agents:
          reviewer: {timeout: 5 minutes}
          other: {timeout: 0}
        """,
    )
    assert [(p.line, p.message, p.hint) for p in problems] == [
        (
            2,
            "'timeout' in agent 'reviewer': invalid duration '5 minutes'",
            "use a number of seconds or forms like 500ms, 30s, 20m, 1h, 3d",
        ),
        (3, "'timeout' in agent 'other': duration must be positive, got 0", None),
    ]


def test_model_entries(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        """\
        models:
          fast: 3
          box: {provider: vllm, nam: llama}
        """,
    )
    assert [f"{p.line}: {p.message}" for p in problems] == [
        "2: model 'fast' must be a string or a mapping, got 3",
        "3: 'provider' in model 'box' must be one of 'openai', 'anthropic' or 'google', got 'vllm'",
        "3: missing required key 'name' in model 'box'",
        "3: unknown key 'nam' in model 'box'",
    ]
    assert "openai:gpt-4o" in str(problems[0])
    assert problems[3].hint == "did you mean 'name'?"


def test_empty_and_missing_steps(tmp_path: Path) -> None:
    lines = lines_of(
        tmp_path,
        """\
        workflows:
          empty:
            steps: []
          none:
            description: nothing to do
          bad: [1, 2]
        """,
    )
    assert lines == [
        "3: 'steps' in workflow 'empty' must not be empty",
        "4: missing required key 'steps' in workflow 'none'",
        "6: workflow 'bad' must be a mapping, got a list",
    ]


def test_steps_without_an_id_are_named_by_position(tmp_path: Path) -> None:
    lines = lines_of(tmp_path, "workflows:\n  w:\n    steps:\n      - {agent: a, prompt: x}\n")
    assert lines[0] == "4: missing required key 'id' in step '#1'"


def test_names_must_be_strings(tmp_path: Path) -> None:
    [problem] = problems_of(tmp_path, "agents:\n  1: {}\n")
    assert (problem.line, problem.message) == (2, "the name 1 under 'agents' must be a string")


def test_every_kind_of_problem_is_reported_together_in_line_order(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        agents:
          reviewer: {model: smrt, retries: -1}
        models:
          smart: openai:gpt-4o
        workflows:
          w:
            steps:
              - {id: a, agent: reviewer, prompt: "{{ steps.b.output }}", timeot: 3s}
              - {id: b, agent: reviewr, prompt: x, needs: [a]}
        """,
    )
    with pytest.raises(ConfigError) as info:
        load_project(path)

    assert str(info.value) == "\n".join(
        [
            "5 problems in the config:",
            f"  {path}:2: 'retries' in agent 'reviewer' must be at least 0, got -1",
            f"  {path}:2: agent 'reviewer' uses unknown model 'smrt'",
            "    hint: did you mean 'smart'? use a name from 'models' (smart) or provider:name",
            f"  {path}:8: unknown key 'timeot' in step 'a'",
            "    hint: did you mean 'timeout'?",
            f"  {path}:8: the prompt of step 'a' refers to step 'b', which runs after it",
            "    hint: step 'b' needs step 'a' (directly or through other steps)",
            f"  {path}:9: step 'b' uses unknown agent 'reviewr'",
            "    hint: did you mean 'reviewer'? known agents: reviewer",
        ]
    )
