"""The live view on a terminal: step table, streamed text, superseded attempts dropped."""

from __future__ import annotations

import time

from rich.console import Console

from agentmill.cli.live import ProgressView
from agentmill.store import EventRecord


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
