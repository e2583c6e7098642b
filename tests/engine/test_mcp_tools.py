"""The pure parts of serving workflows as MCP tools: tool names and input schemas."""

from __future__ import annotations

import logging

import pytest

from agentmill.engine.mcp_tools import WorkflowTools, input_schema, tool_name
from agentmill.spec.loader import load_project_text

PROJECT = """
version: 1
models: {default: openai:gpt-4o}
agents:
  a: {instructions: be brief}
workflows:
  review code:
    inputs:
      diff: {type: string, description: The diff}
      strict: {type: boolean, default: false}
      note: {type: string, default: null}
      files: {type: list, default: [a.py]}
      options: {type: object, default: {}}
      ratio: {type: number}
    steps: [{id: s, agent: a, prompt: "x"}]
  review/code:
    steps: [{id: s, agent: a, prompt: "x"}]
  plain:
    steps: [{id: s, agent: a, prompt: "x"}]
"""


def test_tool_names_replace_what_mcp_does_not_allow() -> None:
    assert tool_name("review") == "review"
    assert tool_name("triage.v2-fast_lane") == "triage.v2-fast_lane"
    assert tool_name("review code/é") == "review_code__"
    assert len(tool_name("w" * 300)) == 128


def test_input_schema_has_types_defaults_descriptions_and_required() -> None:
    spec = load_project_text(PROJECT, "agentmill.yaml").spec
    assert input_schema(spec.workflows["review code"]) == {
        "type": "object",
        "properties": {
            "diff": {"type": "string", "description": "The diff"},
            "strict": {"type": "boolean", "default": False},
            "note": {"type": ["string", "null"], "default": None},
            "files": {"type": "array", "default": ["a.py"]},
            "options": {"type": "object", "default": {}},
            "ratio": {"type": "number"},
        },
        "required": ["diff", "ratio"],
        "additionalProperties": False,
    }
    assert "required" not in input_schema(spec.workflows["plain"])


def test_a_workflow_whose_tool_name_is_taken_is_left_out_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    spec = load_project_text(PROJECT, "agentmill.yaml").spec
    with caplog.at_level(logging.WARNING, logger="agentmill.mcp"):
        tools = WorkflowTools(engine=None, project=spec, config_path=None)  # type: ignore[arg-type]
    assert tools.workflows == {"review_code": "review code", "plain": "plain"}
    assert "workflow 'review/code' is not served as an MCP tool" in caplog.text
