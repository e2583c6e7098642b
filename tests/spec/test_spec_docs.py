"""The examples in docs/config.md load, and the error output shown there is the real one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agentmill.errors import ConfigError, TemplateRenderError
from agentmill.spec.loader import load_project_text
from agentmill.spec.templates import render

DOC = Path(__file__).parents[2] / "docs" / "config.md"


def block(name: str) -> str:
    """The fenced block that follows `<!-- test: name -->` in the doc."""
    match = re.search(rf"<!-- test: {name} -->\n```\w*\n(.*?)```", DOC.read_text(), re.DOTALL)
    assert match is not None, f"no block {name!r} in {DOC}"
    return match.group(1)


def test_complete_example_loads() -> None:
    loaded = load_project_text(block("complete-example"), "agentmill.yaml")
    review = loaded.spec.workflows["review"]
    assert [step.id for step in review.steps] == [
        "security",
        "style",
        "summary",
        "plan",
        "fix-each",
    ]


def test_policies_example_loads() -> None:
    spec = load_project_text(block("policies-example"), "agentmill.yaml").spec
    reviewer = spec.agents["reviewer"]
    assert reviewer.fallback == ["cheap", "house"]
    assert reviewer.cache is not None
    assert reviewer.cache.ttl == 3600
    assert spec.workflows["review"].guard.injection == "block"
    assert spec.limits["openai"].concurrency == 8
    assert spec.breaker.reset == 30


def test_tools_example_loads() -> None:
    spec = load_project_text(block("tools-example"), "agentmill.yaml").spec
    reviewer = spec.agents["reviewer"]
    assert [tool.builtin for tool in reviewer.tools[:3]] == [
        "read_file",
        "list_files",
        "run_command",
    ]
    assert reviewer.tools[3].mcp == "git"
    assert reviewer.tools[4].agent == "summarizer"
    assert spec.mcp["git"].approve == ["git_commit"]


def test_documented_tool_errors_are_the_real_ones() -> None:
    """Each tool message in the table of errors is what loading the file says."""
    text = """\
mcp:
  github: {url: 'https://h/mcp'}
agents:
  b: {tools: [{agent: a}]}
  a:
    tools:
      - {builtin: read_file, agent: b}
      - http_request
      - read_fil
      - mcp: gitub
      - agent: b
"""
    with pytest.raises(ConfigError) as info:
        load_project_text(text, "agentmill.yaml")
    assert len(info.value.problems) == 5
    for problem in info.value.problems:
        assert problem.message.replace("`", "") in DOC.read_text().replace("`", ""), problem


def test_bad_example_gives_the_documented_output() -> None:
    with pytest.raises(ConfigError) as info:
        load_project_text(block("bad-example"), "agentmill.yaml")
    assert str(info.value) + "\n" == block("bad-example-output")


def test_documented_render_error() -> None:
    context = {"steps": {"plan": {"output": {"paths": []}, "skipped": False}}}
    with pytest.raises(TemplateRenderError) as info:
        render("{{ steps.plan.output.files }}", context)
    assert str(info.value) in DOC.read_text()


def test_cli_presets_example_loads_and_its_preset_is_sound() -> None:
    from agentmill.agents.cli.presets import load_presets, preset_problems

    doc = Path(__file__).parents[2] / "docs" / "cli-agents.md"
    match = re.search(
        r"<!-- test: cli-presets-example -->\n```\w*\n(.*?)```", doc.read_text(), re.DOTALL
    )
    assert match is not None
    spec = load_project_text(match.group(1), "agentmill.yaml").spec
    presets = load_presets(spec.presets)
    assert presets["claude"].concurrency == 2
    assert presets["claude"].output == "jsonl"
    assert preset_problems(presets["reviewbot"]) == []
    assert spec.agents["bot"].preset == "reviewbot"
