"""Tool calls in the live view: a line as each call starts (`→ step name(args…)`), one as
it ends (`← … duration, size` or `✘ … error`), untrusted text cleaned before printing."""

from __future__ import annotations

import io
import re
import time
import uuid
from pathlib import Path

from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from rich.console import Console

from agentmill.agents.models import override_models
from agentmill.cli.client import LocalClient, RunSource
from agentmill.cli.live import ProgressView
from agentmill.cli.run_cmd import follow_run
from agentmill.engine.engine import Engine
from agentmill.spec.loader import load_project_text
from agentmill.store import EventRecord


def _event(seq: int, kind: str, step: str, attempt: int = 1, **data: object) -> EventRecord:
    return EventRecord(
        run_id="r", seq=seq, kind=kind, step=step, attempt=attempt, data=data, ts=time.time()
    )


def _shown(terminal: bool, *events: EventRecord, width: int = 120) -> str:
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=terminal, color_system=None, width=width)
    with ProgressView(console, step_ids=["work"]) as view:
        view.handle(_event(1, "step_started", "work"))
        for event in events:
            view.handle(event)
    return screen.getvalue()


def test_each_call_shows_a_line_as_it_starts_and_one_as_it_ends() -> None:
    text = _shown(
        False,
        _event(2, "step_tool_call", "work", call="t1.1", name="add", args='{"a": 1, "b": 2}'),
        _event(3, "step_tool_result", "work", call="t1.1", name="add", duration=0.25, size=1234),
        _event(4, "step_tool_call", "work", call="t1.2", name="broken", args='{"text": "x"}'),
        _event(
            5,
            "step_tool_result",
            "work",
            call="t1.2",
            name="broken",
            duration=0.01,
            size=0,
            error="ValueError: cannot handle 'x'\nTraceback follows",
        ),
    )
    lines = [line.strip() for line in text.splitlines()]
    assert '→ work add({"a": 1, "b": 2})' in lines
    assert "← work add 0.25s, 1,234 chars" in lines
    assert "✘ work broken 0.01s: ValueError: cannot handle 'x'…" in lines
    assert lines.index('→ work add({"a": 1, "b": 2})') < lines.index(
        "← work add 0.25s, 1,234 chars"
    )


def test_untrusted_names_arguments_and_errors_are_cleaned_and_long_arguments_cut() -> None:
    hostile = "evil\x1b[2J\x1b]0;pwned\x07[bold]tool[/bold]\r"
    text = _shown(
        True,
        _event(2, "step_tool_call", "work", call="t1.1", name=hostile, args="[" + "x" * 500),
        _event(3, "step_tool_result", "work", call="t1.1", name=hostile, error="bad\x1b[31m"),
    )
    assert "\x1b[2J" not in text
    assert "\x1b]0;" not in text
    assert "\x07" not in text
    assert "[bold]tool[/bold]" in text, "markup in a tool name was interpreted, not shown"
    assert "x" * 100 not in text
    assert re.search(r"x+…\)", text)


def test_calls_of_a_superseded_attempt_are_not_shown() -> None:
    text = _shown(
        False,
        _event(2, "step_started", "work", attempt=2),
        _event(3, "step_tool_call", "work", attempt=1, call="t1.1", name="late", args="{}"),
    )
    assert "late" not in text


def test_text_of_an_agent_used_as_a_tool_streams_in_the_panel_only() -> None:
    events = (_event(2, "step_tool_output", "work", call="t1.1", text="child says hi\x1b[2J"),)
    on_terminal = _shown(True, *events)
    plain = _shown(False, *events, _event(3, "step_finished", "work", usage={}))
    assert "child says hi" in on_terminal
    assert "\x1b[2J" not in on_terminal
    assert "child says hi" not in plain


TOOLS = '''
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b
'''

CONFIG = """
version: 1
agents:
  worker:
    model: openai:gpt-4o
    tools: [{{function: {module}:add}}]
workflows:
  w:
    steps:
      - {{id: work, agent: worker, prompt: "add"}}
"""


def _script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    turn = sum(isinstance(m, ModelResponse) for m in messages) + 1
    if turn <= 2:
        return ModelResponse(parts=[ToolCallPart("add", {"a": turn, "b": 10})])
    return ModelResponse(parts=[TextPart("done")])


async def test_a_real_run_shows_its_tool_calls_as_they_happen(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    module = f"live_tools_{uuid.uuid4().hex}"
    (tmp_path / f"{module}.py").write_text(TOOLS)
    config = tmp_path / "agentmill.yaml"
    config.write_text(CONFIG.format(module=module))
    project = load_project_text(config.read_text(), str(config)).spec
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=False, width=120)
    client = LocalClient(sqlite_engine)
    model = FunctionModel(_script)
    with override_models(lambda _label: model):
        run = await client.start(RunSource(project=project, config_path=str(config)), "w", {})
        code = await follow_run(client, run, as_json=False, console=console)
    assert code == 0
    lines = [line.strip() for line in screen.getvalue().splitlines()]
    calls = [line for line in lines if line.startswith(("→", "←"))]
    assert calls[0] == '→ work add({"a": 1, "b": 10})'
    assert re.fullmatch(r"← work add \d+\.\d\ds, 2 chars", calls[1])
    assert calls[2] == '→ work add({"a": 2, "b": 10})'
    assert len(calls) == 4
