"""Presets as data: the built-ins load, argv templates render one element to one argument,
a project's presets replace or add to the built-ins, and bad presets fail at load."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from pydantic import ValidationError

from agentmill.agents.cli.presets import (
    EventRule,
    PresetSpec,
    compile_path,
    extractors,
    load_presets,
    preset_problems,
    render_argv,
    select,
)
from agentmill.errors import TemplateRenderError

BUILT_INS = {"claude", "codex", "gemini", "aider", "generic"}
VARIABLES = {"prompt": "fix it", "run_id": "r1", "step_id": "s1", "workdir": "/tmp/w"}
HOSTILE = [
    '"; rm -rf ~ #',
    "$(id)",
    "`id`",
    "--help",
    "-rf",
    "a b\tc\nd",
    "{{ 7 * 7 }}",
    'it\'s a "quote" \\ and a ; | & > <',
]


def test_every_built_in_loads() -> None:
    presets = load_presets()
    assert set(presets) >= BUILT_INS
    for name in BUILT_INS - {"generic"}:
        preset = presets[name]
        assert preset.command, name
        assert preset.version, name
        assert preset.description, name
        assert "PATH" in preset.env, name
        render_argv(preset.command, VARIABLES)
        if preset.resume is not None:
            render_argv(preset.resume, {**VARIABLES, "session_id": "abc"})
    assert presets["generic"].command == []
    assert {presets[name].output for name in ("claude", "codex", "gemini")} == {"jsonl"}
    assert presets["aider"].output == "text"


def test_built_ins_are_cached_and_not_shared() -> None:
    first = load_presets()
    first.pop("claude")
    assert "claude" in load_presets()
    assert load_presets()["codex"] is load_presets()["codex"]


@pytest.mark.parametrize("value", HOSTILE)
def test_render_argv_keeps_a_value_one_literal_argument(value: str) -> None:
    argv = render_argv(["tool", "--message={{ prompt }}", "{{ prompt }}"], {"prompt": value})
    assert argv == ("tool", f"--message={value}", value)


def test_rendered_argv_reaches_a_process_unsplit() -> None:
    script = "import json, sys; print(json.dumps(sys.argv[1:]))"
    templates = ["-c", script, *(f"{{{{ v{index} }}}}" for index in range(len(HOSTILE)))]
    variables = {f"v{index}": value for index, value in enumerate(HOSTILE)}
    argv = render_argv(templates, variables)
    done = subprocess.run([sys.executable, *argv], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == HOSTILE


def test_render_argv_names_the_element_that_failed() -> None:
    with pytest.raises(TemplateRenderError, match=r"argv element 2 \('\{\{ missing \}\}'\)"):
        render_argv(["tool", "{{ prompt }}", "{{ missing }}"], {"prompt": "p"})


def test_render_argv_refuses_a_nul_byte() -> None:
    with pytest.raises(TemplateRenderError, match=r"argv element 1.*NUL"):
        render_argv(["tool", "{{ prompt }}"], {"prompt": "a\0b"})


def test_a_project_preset_adds_a_tool() -> None:
    extra = PresetSpec(command=["./agent.sh", "--task={{ prompt }}"], env=["PATH"])
    presets = load_presets({"mine": extra})
    assert presets["mine"] is extra
    assert presets["codex"] == load_presets()["codex"]


def test_a_project_preset_changes_only_the_fields_it_sets() -> None:
    builtin = load_presets()["claude"]
    change = PresetSpec.model_validate({"concurrency": 2, "env": ["PATH", "HOME"]})
    claude = load_presets({"claude": change})["claude"]
    assert (claude.concurrency, claude.env) == (2, ["PATH", "HOME"])
    assert claude.command == builtin.command
    assert claude.events == builtin.events
    assert load_presets()["claude"].concurrency == builtin.concurrency  # built-ins untouched


def test_a_project_preset_can_replace_a_built_in_whole() -> None:
    data = {"command": ["my-claude", "{{ prompt }}"], "output": "text", "events": []}
    claude = load_presets({"claude": PresetSpec.model_validate(data)})["claude"]
    assert claude.command == ["my-claude", "{{ prompt }}"]
    assert (claude.output, claude.events, claude.stdin) == ("text", [], "{{ prompt }}")
    assert preset_problems(claude) == []


def test_a_preset_loads_from_plain_data() -> None:
    data = {
        "command": ["tool", "--json"],
        "stdin": "{{ prompt }}",
        "output": "jsonl",
        "events": [{"match": {"kind": "done", "ok": True}, "result": "answer.text"}],
    }
    preset = PresetSpec.model_validate(data)
    assert preset.events[0].match == {"kind": "done", "ok": True}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"output": "text", "events": [{"match": {"a": "b"}}]}, "only to `output: jsonl`"),
        ({"output": "jsonl"}, "at least one rule under `events`"),
        ({"command": ["t", "{{ secret }}"]}, "uses secret"),
        ({"command": ["t", "{{ session_id }}"]}, "uses session_id"),
        ({"stdin": "{{ inputs.x }}"}, "uses inputs"),
        ({"command": ["t", "{{ prompt"]}, "template '{{ prompt'"),
        (
            {"output": "jsonl", "events": [{"match": {"type": "x"}, "text": "a[type=b.c"}]},
            r"events\[0\]: path 'a\[type=b.c' has an unclosed",
        ),
        ({"output": "jsonl", "events": [{"match": {"a..b": 1}}]}, "empty key"),
        ({"output": "jsonl", "events": [{"match": {}}]}, "at least one key"),
    ],
)
def test_preset_problems_name_what_is_wrong(data: dict[str, object], message: str) -> None:
    problems = preset_problems(PresetSpec.model_validate(data))
    assert len(problems) == 1
    assert re.search(message, problems[0]), problems


def test_every_built_in_has_no_problems() -> None:
    for name, preset in load_presets().items():
        assert preset_problems(preset) == [], name


@pytest.mark.parametrize(
    "data", [{"command": ["t"], "shell": True}, {"concurrency": 0}, {"output": "xml"}]
)
def test_malformed_presets_fail_validation(data: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        PresetSpec.model_validate(data)


def test_resume_may_use_the_session_id() -> None:
    preset = PresetSpec(command=["t"], resume=["t", "--resume={{ session_id }}"])
    assert preset_problems(preset) == []
    assert render_argv(preset.resume or [], {"session_id": "s-1"}) == ("t", "--resume=s-1")


def test_presets_are_frozen() -> None:
    preset = load_presets()["claude"]
    with pytest.raises(ValidationError):
        preset.command = ["rm"]  # type: ignore[misc]


LINE = {
    "type": "assistant",
    "message": {
        "content": [
            {"type": "text", "text": "one"},
            {"type": "tool_use", "name": "Bash", "input": {"command": "ls"}},
            {"type": "text", "text": "two"},
            {"type": "text", "text": None},
        ]
    },
    "flags": [{"ok": True, "n": 1}, {"ok": False, "n": 2}],
}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("type", ["assistant"]),
        ("message.content[type=text].text", ["one", "two"]),
        ("message.content[type=tool_use].name", ["Bash"]),
        ("message.content[type=tool_use].input.command", ["ls"]),
        ("message.content[*].type", ["text", "tool_use", "text", "text"]),
        ("message.content[1].name", ["Bash"]),
        ("message.content[-1].type", ["text"]),
        ("message.content[9].type", []),
        ("flags[ok=true].n", [1]),
        ("flags[ok=false].n", [2]),
        ("missing.key", []),
        ("type.deeper", []),
        ("message[*]", []),
    ],
)
def test_paths_select_every_value_in_order(path: str, expected: list[object]) -> None:
    assert select(LINE, path) == expected


@pytest.mark.parametrize("path", ["", "a..b", "a[", "a]", "a[x", "[]", "a[b]c", "a.[=1]"])
def test_bad_paths_are_refused(path: str) -> None:
    with pytest.raises(ValueError, match="path"):
        compile_path(path)


def test_rule_lists_its_extractors_in_a_fixed_order() -> None:
    rule = EventRule(match={"type": "result"}, error="e", result="r", session="s")
    assert extractors(rule) == [("session", "s"), ("result", "r"), ("error", "e")]


def test_presets_grant_what_a_self_hosted_model_needs_and_keep_bookkeeping_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    presets = load_presets()
    aider = presets["aider"]
    assert {"OPENAI_API_BASE", "OPENAI_BASE_URL", "OLLAMA_API_BASE", "AIDER_*"} <= set(aider.env)
    assert {"ANTHROPIC_BASE_URL", "ANTHROPIC_AUTH_TOKEN"} <= set(presets["claude"].env)
    assert "OPENAI_BASE_URL" in presets["codex"].env
    assert "GOOGLE_GEMINI_BASE_URL" in presets["gemini"].env
    assert aider.ignore == [".aider*"]
    assert "--no-gitignore" in aider.command  # aider would add `.aider*` to .gitignore
    from agentmill.settings import granted_environment

    monkeypatch.setenv("AIDER_MODEL", "openai/qwen2.5-coder")
    monkeypatch.setenv("AIDERX", "not a prefix match")
    granted = granted_environment(aider.env)
    assert granted["AIDER_MODEL"] == "openai/qwen2.5-coder"
    assert "AIDERX" not in granted
