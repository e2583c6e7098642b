"""Loading project files: YAML and schema problems reported at file:line, all at once."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from agentmill.errors import ConfigError, ConfigProblem
from agentmill.spec.loader import LoadedProject, load_project, load_project_text
from agentmill.spec.models import ModelEndpoint

EXAMPLE = """\
version: 1
models:
  default: local:smollm2              # offline default
  smart: anthropic:claude-sonnet-4-5  # any pydantic-ai model string
  ollama: {provider: openai, base_url: http://127.0.0.1:11434/v1, name: llama3.2}
agents:
  reviewer:
    model: default
    instructions: You are a strict senior code reviewer. Be concise.
    max_tokens: 400
    timeout: 60s
    retries: 2
  planner:
    model: smart
    output: {type: object, properties: {files: {type: array}}}
workflows:
  review:
    inputs: {diff: {type: string}, depth: {type: integer, default: 2}}
    steps:
      - id: security
        agent: reviewer
        prompt: "Find security problems in this diff:\\n{{ inputs.diff }}"
      - id: style
        agent: reviewer
        prompt: "Find readability problems in this diff:\\n{{ inputs['diff'] }}"
      - id: summary                   # runs after both; security and style run in parallel
        agent: reviewer
        needs: [security, style]
        prompt: "Merge these reviews:\\n{{ steps.security.output }}\\n{{ steps.style.output }}"
      - id: sign-off
        agent: reviewer
        needs: [summary]
        timeout: 20m
        retries: 3
        backoff: 500ms
        prompt: |
          Should this review be posted? Answer yes or no.
          {{ steps.summary.output }}
      - id: fix
        agent: planner
        needs: [sign-off]
        when: "{{ steps['sign-off'].output == 'yes' }}"
        foreach: "{{ inputs.diff.splitlines() }}"
        concurrency: 4
        prompt: "Fix line {{ index }} of the diff: {{ item }} ({{ steps.summary.output }})"
    outputs:
      review: "{{ steps.summary.output }}"
      fixes: "{{ steps.fix.output }}"
"""


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


def test_the_architecture_example_loads(tmp_path: Path) -> None:
    loaded = load_project(write(tmp_path, EXAMPLE))

    review = loaded.spec.workflows["review"]
    assert [step.id for step in review.steps] == ["security", "style", "summary", "sign-off", "fix"]
    assert review.steps[3].timeout == 1200.0
    assert review.steps[3].backoff == 0.5
    assert review.inputs["depth"].default == 2
    assert loaded.spec.models["ollama"] == ModelEndpoint(
        provider="openai", base_url="http://127.0.0.1:11434/v1", name="llama3.2"
    )
    assert loaded.spec.agents["reviewer"].timeout == 60.0
    assert loaded.path == tmp_path / "agentmill.yaml"


def test_line_of_points_at_keys_and_items(tmp_path: Path) -> None:
    loaded = load_project(write(tmp_path, EXAMPLE))

    assert loaded.line_of("workflows", "review", "steps", 2, "agent") == 27
    assert loaded.line_of("workflows", "review", "steps", 2) == 26
    assert loaded.line_of("workflows", "review", "steps", 2, "needs", 1) == 28
    assert loaded.line_of("agents", "reviewer", "timeout") == 11
    # A node that does not exist falls back to the nearest ancestor.
    assert loaded.line_of("workflows", "review", "steps", 2, "nothing", 3) == 26
    assert loaded.line_of("nothing") == 1


def test_line_in_maps_lines_of_block_text(tmp_path: Path) -> None:
    loaded = load_project(write(tmp_path, EXAMPLE))
    prompt = ("workflows", "review", "steps", 3, "prompt")

    assert loaded.line_in(*prompt, line=1) == 37
    assert loaded.line_in(*prompt, line=2) == 38
    # Quoted text is reported at its key.
    assert loaded.line_in("workflows", "review", "steps", 0, "prompt", line=2) == 22


def test_problem_helper_reports_at_the_node(tmp_path: Path) -> None:
    loaded = load_project(write(tmp_path, EXAMPLE))

    problem = loaded.problem("no key for this model", "models", "smart", hint="set it")

    assert (
        str(problem) == f"{tmp_path / 'agentmill.yaml'}:4: no key for this model\n    hint: set it"
    )


def test_load_project_text_uses_the_given_file_name() -> None:
    loaded = load_project_text(EXAMPLE, "snapshot.yaml")
    assert loaded.file == "snapshot.yaml"
    assert isinstance(loaded, LoadedProject)

    with pytest.raises(ConfigError) as info:
        load_project_text("agents: [\n", "inline.yaml")
    assert str(info.value).startswith("1 problem in the config:\n  inline.yaml:2: invalid YAML")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_project(path)

    [problem] = info.value.problems
    assert (problem.file, problem.line, problem.message) == (str(path), None, "file not found")
    assert problem.hint == f"no file at {path}; check the path"


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_project(tmp_path)
    assert info.value.problems[0].message == "is a directory"


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "agentmill.yaml"
    path.write_bytes(b"version: 1\nagents:\n  r: {instructions: caf\xe9}\n")

    with pytest.raises(ConfigError) as info:
        load_project(path)
    assert (
        str(info.value.problems[0]) == f"{path}:3: not UTF-8 text\n    hint: save the file as UTF-8"
    )


def test_yaml_syntax_error_has_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "agents:\n  reviewer:\n    instructions: Fix: this\n")

    with pytest.raises(ConfigError) as info:
        load_project(path)

    message = str(info.value)
    assert f"{path}:3: invalid YAML: mapping values are not allowed here" in message
    assert "hint: quote values that contain ': '" in message


def test_tabs_get_a_hint(tmp_path: Path) -> None:
    [problem] = problems_of(tmp_path, "agents:\n\treviewer: {}\n")
    assert problem.line == 2
    assert problem.hint == "indent with spaces, not tabs"


def test_several_documents_are_refused(tmp_path: Path) -> None:
    [problem] = problems_of(tmp_path, "version: 1\n---\nversion: 1\n")
    assert (problem.line, problem.message) == (
        2,
        "invalid YAML: expected a single document in the stream, but found another document",
    )
    assert problem.hint == "keep one document per file (remove the '---' line)"


def test_empty_file(tmp_path: Path) -> None:
    assert lines_of(tmp_path, "# nothing yet\n") == ["None: the file is empty"]


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    assert lines_of(tmp_path, "- a\n- b\n") == [
        "1: the top level must be a mapping of keys, not a list"
    ]


def test_duplicate_keys(tmp_path: Path) -> None:
    [problem] = problems_of(
        tmp_path,
        """\
        agents:
          reviewer: {}
          coder: {}
          reviewer: {retries: 1}
        """,
    )
    assert (problem.line, problem.message) == (4, "duplicate key 'reviewer'")
    assert problem.hint == "remove one of them (the first is at line 2)"


def test_anchors_aliases_and_merge_keys(tmp_path: Path) -> None:
    loaded = load_project(
        write(
            tmp_path,
            """\
            agents:
              base: &base {model: local:smollm2, retries: 2}
              strict:
                <<: *base
                retries: 3
            """,
        )
    )
    assert loaded.spec.agents["strict"].retries == 3
    assert loaded.spec.agents["strict"].model == "local:smollm2"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('version: 1\nx: "\x00"\n', "invalid YAML: unacceptable character #x0000"),
        ("[" * 5000, "nested too deeply: more than 100 levels of mappings and lists"),
    ],
)
def test_unreadable_yaml_is_a_config_error(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_project_text(text, "x.yaml")
    assert info.value.problems[0].message.startswith(message)


def test_a_yaml_alias_bomb_in_a_default_is_reported_briefly() -> None:
    levels = ["      - &a0 [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]"]
    levels += [f"      - &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 8)]
    text = (
        "agents: {a: {model: openai:gpt-4o}}\nworkflows:\n  w:\n    inputs:\n"
        "      big:\n        type: string\n        default:\n"
        + "\n".join("  " + line for line in levels)
        + '\n    steps:\n      - {id: s, agent: a, prompt: "x"}\n'
    )
    with pytest.raises(ConfigError) as info:
        load_project_text(text, "x.yaml")
    assert len(str(info.value)) < 2000  # 10**8 numbers, shown as a short excerpt


def _nested_default(depth: int) -> str:
    """A config whose input default nests `depth` lists (5 levels above it: 1-based line 6)."""
    value = "[" * depth + "]" * depth
    return (
        "agents: {a: {model: openai:gpt-4o}}\nworkflows:\n  w:\n    inputs:\n"
        f"      v:\n        type: list\n        default: {value}\n"
        '    steps:\n      - {id: s, agent: a, prompt: "x"}\n'
    )


def test_a_config_nests_at_most_100_levels() -> None:
    load_project_text(_nested_default(95), "x.yaml")  # with the 5 levels above: 100
    with pytest.raises(ConfigError) as info:
        load_project_text(_nested_default(96), "x.yaml")
    [problem] = info.value.problems
    assert (problem.line, problem.message) == (
        7,
        "nested too deeply: more than 100 levels of mappings and lists",
    )


def _alias_in_lists(lists: int) -> str:
    """Input `u` nests 90 lists (levels 6 to 95); `v` holds an alias of them in `lists` lists."""
    anchored = "&d0 " + "[" * 90 + "]" * 90
    alias = "[" * lists + "*d0" + "]" * lists
    return (
        "agents: {a: {model: openai:gpt-4o}}\nworkflows:\n  w:\n    inputs:\n"
        f"      u: {{type: list, default: {anchored}}}\n"
        f"      v: {{type: list, default: {alias}}}\n"
        '    steps:\n      - {id: s, agent: a, prompt: "x"}\n'
    )


def test_aliases_count_towards_the_nesting() -> None:
    load_project_text(_alias_in_lists(5), "x.yaml")  # 5 + 5 + 90 levels
    with pytest.raises(ConfigError) as info:
        load_project_text(_alias_in_lists(6), "x.yaml")
    [problem] = info.value.problems
    assert (problem.line, problem.message) == (
        6,
        "nested too deeply: more than 100 levels of mappings and lists",
    )


@pytest.mark.parametrize(
    ("values", "refused"),
    [(9, True), (3, False)],
    ids=["billion-laughs", "a-few-aliases"],
)
def test_aliases_count_as_the_values_they_repeat(values: int, refused: bool) -> None:
    levels = ["&l0 [" + ", ".join(['"lol"'] * values) + "]"]
    levels += [f"&l{i} [{', '.join([f'*l{i - 1}'] * values)}]" for i in range(1, 9)]
    text = _nested_default(1).replace("default: []", "default: [" + ", ".join(levels) + "]")
    if not refused:
        load_project_text(text, "x.yaml")  # 3**9 = 19,683 values: fine
        return
    with pytest.raises(ConfigError) as info:
        load_project_text(text, "x.yaml")
    [problem] = info.value.problems
    assert problem.line == 7
    assert problem.message.startswith("the file holds more than 100,000 values")
    assert problem.hint is not None
    assert problem.hint.startswith("each alias repeats its anchor's whole value")


def test_a_config_holds_at_most_100000_values() -> None:
    with pytest.raises(ConfigError) as info:
        load_project_text(_nested_default(1).replace("[]", "[" + "1," * 100_000 + "]"), "x.yaml")
    [problem] = info.value.problems
    assert (problem.line, problem.message) == (
        7,
        "the file holds more than 100,000 values (mappings, lists and scalars; "
        "an alias counts as all the values it repeats)",
    )


def test_a_recursive_alias_is_refused() -> None:
    text = _nested_default(1).replace("default: []", "default: &loop [1, *loop]")
    with pytest.raises(ConfigError) as info:
        load_project_text(text, "x.yaml")
    [problem] = info.value.problems
    assert (problem.line, problem.message) == (
        7,
        "alias *loop is used inside the value it names",
    )


def test_config_text_over_1_mib_is_refused_before_parsing() -> None:
    text = "#" + "é" * (512 * 1024) + "\n"  # 524,289 characters, 1,048,578 bytes
    with pytest.raises(ConfigError) as info:
        load_project_text(text, "x.yaml")
    [problem] = info.value.problems
    assert problem.message == (
        "the config is 1,048,578 bytes; a config file may be at most 1 MiB (1,048,576 bytes)"
    )


def test_a_config_file_over_1_mib_is_refused_with_its_size(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_bytes(b"#" * (3 * 1024 * 1024))
    with pytest.raises(ConfigError) as info:
        load_project(path)
    [problem] = info.value.problems
    assert problem.message.startswith("the file is 3,145,728 bytes; a config file may be")
    assert problem.hint is not None
    assert "--input name=@file" in problem.hint
