"""The live view on a terminal: step table, streamed text, superseded attempts dropped."""

from __future__ import annotations

import asyncio
import io
import re
import time
from collections.abc import AsyncIterator

import pytest
from pydantic_ai.messages import ModelMessage
from pydantic_ai.models.function import AgentInfo, FunctionModel
from rich.console import Console

from agentmill.agents.models import override_models
from agentmill.cli.client import LocalClient, RunSource
from agentmill.cli.live import ProgressView
from agentmill.cli.run_cmd import follow_run
from agentmill.engine.engine import Engine
from agentmill.spec.loader import load_project_text
from agentmill.store import EventRecord
from tests.fakes import prompt_of


def _event(seq: int, kind: str, step: str | None, attempt: int = 1, **data: object) -> EventRecord:
    return EventRecord(
        run_id="r", seq=seq, kind=kind, step=step, attempt=attempt, data=data, ts=time.time()
    )


def test_terminal_view_shows_steps_and_drops_superseded_output() -> None:
    console = Console(force_terminal=True, record=True, width=100)
    with ProgressView(console, step_ids=["draft", "review"]) as view:
        view.handle(_event(1, "step_started", "draft", attempt=1))
        view.handle(_event(2, "step_output", "draft", attempt=1, text="lost "))
        view.handle(_event(3, "step_started", "draft", attempt=2))
        view.handle(_event(4, "step_output", "draft", attempt=1, text="stale"))
        view.handle(_event(5, "step_output", "draft", attempt=2, text="fresh text"))
        view.handle(_event(6, "step_started", "review"))
        snapshot = console.export_text(clear=False)
        view.handle(_event(7, "step_finished", "draft", attempt=2, usage={"output_tokens": 3}))
    text = console.export_text()
    assert "fresh text" in snapshot
    assert "stale" not in snapshot
    assert "draft finished" in text
    assert "review" in text
    assert "pending" in text


def test_plain_view_prints_lines_and_finished_text() -> None:
    console = Console(force_terminal=False, record=True, width=100)
    with ProgressView(console, step_ids=["a"]) as view:
        view.handle(_event(1, "step_started", "a"))
        view.handle(_event(2, "step_output", "a", text="hello"))
        view.handle(_event(3, "step_retrying", "a", error="HTTP 503", delay=0.5))
        view.handle(_event(4, "step_started", "a", attempt=2))
        view.handle(_event(5, "step_output", "a", attempt=2, text="world"))
        view.handle(_event(6, "step_finished", "a", attempt=2, usage={"output_tokens": 1}))
    text = console.export_text()
    assert "a attempt 1 failed: HTTP 503; retrying in 0.5s" in text
    assert "    world" in text
    assert "hello" not in text


def test_an_approval_gate_says_how_to_approve_and_who_decided() -> None:
    console = Console(force_terminal=False, record=True, width=200)
    with ProgressView(console, step_ids=["sign-off"]) as view:
        view.handle(_event(1, "step_started", "sign-off", gate=True))
        view.handle(
            _event(
                2,
                "approval_requested",
                "sign-off",
                prompt="Ship it?",
                expires_at=time.time() + 3600,
                on_timeout="reject",
            )
        )
        view.handle(_event(3, "approval_decided", "sign-off", status="approved", by="ops-key"))
        view.handle(_event(4, "step_finished", "sign-off", gate=True, elapsed=1.0))
    text = console.export_text()
    assert "sign-off waits for approval: Ship it?" in text
    assert "agentmill approve r sign-off [--reject]" in text
    assert "then reject" in text
    assert "sign-off approved by ops-key" in text
    assert "tokens" not in text.split("approved by ops-key")[1]


def test_a_command_line_step_shows_its_exit_status_files_and_stderr() -> None:
    console = Console(record=True, width=120, force_terminal=False)
    with ProgressView(console, step_ids=["fix"]) as view:
        view.handle(_event(1, "step_started", "fix"))
        view.handle(_event(2, "step_stderr", "fix", text="warning: slow disk\n"))
        view.handle(_event(3, "step_tool", "fix", tool="Write"))
        details = {"cli": {"exit_code": 0}, "diff": {"files": ["a.py", "b.py"]}}
        view.handle(_event(4, "step_finished", "fix", usage={}, details=details))
    text = console.export_text()
    assert "fix stderr: warning: slow disk" in text
    assert "fix uses Write" in text
    assert "(exit 0, 2 files changed)" in text


TWO_STEPS = """
version: 1
agents:
  a: {model: openai:gpt-4o}
workflows:
  w:
    steps:
      - {id: quick, agent: a, prompt: "quick"}
      - {id: slow, agent: a, needs: [quick], prompt: "slow"}
"""
_CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")


def _rows(screen: io.StringIO, step: str) -> list[tuple[str, str]]:
    """(status, elapsed) of every rendering of a step's table row so far."""
    text = _CONTROL.sub("\n", screen.getvalue())
    row = re.compile(rf"^{step} +([a-z]+) +(\d+\.\d)s", re.MULTILINE)
    return row.findall(text)


async def _wait_for_ticks(screen: io.StringIO, step: str, release: asyncio.Event) -> bool:
    """Whether the step's elapsed time grows on screen while nothing happens to it."""
    try:
        async with asyncio.timeout(30):
            while (
                len({elapsed for status, elapsed in _rows(screen, step) if status == "running"}) < 3
            ):
                await asyncio.sleep(0.05)
        return True
    except TimeoutError:
        return False
    finally:
        release.set()


async def test_a_real_run_on_a_terminal_ends_succeeded_and_its_clock_ticks(
    sqlite_engine: Engine,
) -> None:
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, color_system=None, width=100)
    release = asyncio.Event()

    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
        if prompt_of(messages) == "slow":
            await release.wait()  # no event for this step until the screen has ticked
        yield "done"

    client = LocalClient(sqlite_engine)
    source = RunSource(project=load_project_text(TWO_STEPS, "t.yaml").spec, config_path=None)
    with override_models(lambda label: FunctionModel(stream_function=stream, model_name=label)):
        run = await client.start(source, "w", {})
        ticks = asyncio.create_task(_wait_for_ticks(screen, "slow", release))
        code = await follow_run(client, run, as_json=False, console=console)
    assert code == 0
    assert [_rows(screen, step)[-1][0] for step in ("quick", "slow")] == ["succeeded"] * 2
    shown = sorted({elapsed for status, elapsed in _rows(screen, "slow") if status == "running"})
    assert await ticks, f"the elapsed time of a running step froze; it showed {shown}"


def test_steps_under_way_when_the_run_ends_stop_with_it() -> None:
    console = Console(force_terminal=True, color_system=None, record=True, width=100)
    with ProgressView(console, step_ids=["a", "b", "c"]) as view:
        view.handle(_event(1, "step_started", "a"))
        view.handle(_event(2, "step_finished", "a", usage={"output_tokens": 2}))
        view.handle(_event(3, "step_started", "b"))
        view.handle(_event(4, "run_finished", None, status="cancelled", error="cancelled"))
    final = console.export_text().split("step")[-1]
    assert re.search(r"a +succeeded", final)
    assert re.search(r"b +cancelled", final)
    assert re.search(r"c +pending", final)


@pytest.mark.parametrize("terminal", [True, False])
def test_commands_in_progress_lines_are_not_wrapped_on_a_narrow_screen(terminal: bool) -> None:
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=terminal, color_system=None, width=40)
    with ProgressView(console, step_ids=["sign-off"]) as view:
        view.handle(_event(1, "step_started", "sign-off", gate=True))
        expires = time.time() + 3600
        view.handle(_event(2, "approval_requested", "sign-off", prompt="Ship?", expires_at=expires))
    lines = [line.strip() for line in _CONTROL.sub("\n", screen.getvalue()).splitlines()]
    assert any(line.startswith("agentmill approve r sign-off [--reject]") for line in lines)


def test_a_fan_out_step_sums_up_its_items_and_lists_them_under_it() -> None:
    console = Console(force_terminal=True, color_system=None, record=True, width=100)
    with ProgressView(console, step_ids=["each", "after"]) as view:
        view.handle(_event(1, "step_started", "each[0]"))
        view.handle(_event(2, "step_started", "each[1]"))
        view.handle(_event(3, "step_finished", "each[0]", usage={"output_tokens": 2}))
        during = console.export_text(clear=False).split("step")[-1]
        view.handle(_event(4, "step_finished", "each[1]", usage={"output_tokens": 3}))
        view.handle(_event(5, "step_started", "after"))
        view.handle(_event(6, "step_finished", "after", usage={"output_tokens": 1}))
    assert re.search(r"each +running", during)
    final = console.export_text().split("step")[-1]
    rows = [line.split()[:2] for line in final.strip().splitlines()[1:]]
    assert rows == [
        ["each", "succeeded"],
        ["each[0]", "succeeded"],
        ["each[1]", "succeeded"],
        ["after", "succeeded"],
    ]
    assert re.search(r"each +succeeded +\d+\.\ds +5", final)
