"""Running a workflow from YAML text on an engine, with a scripted model."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agentmill.engine.engine import Engine
from agentmill.spec.loader import load_project_text
from agentmill.store import EventRecord, RunRecord


async def run_yaml(
    engine: Engine, text: str, workflow: str = "w", inputs: Mapping[str, Any] | None = None
) -> tuple[RunRecord, list[EventRecord]]:
    """Submit a workflow and follow it to its end; returns the final run and its events."""
    loaded = load_project_text(text, "test.yaml")
    run = await engine.submit(loaded.spec, workflow, inputs or {})
    events = [event async for event in engine.follow(run.id)]
    return await engine.store.get_run(run.id), events


def kinds(events: list[EventRecord], step: str) -> list[str]:
    return [e.kind for e in events if e.step == step]


def seq_of(events: list[EventRecord], kind: str, step: str) -> int:
    return next(e.seq for e in events if e.kind == kind and e.step == step)
