"""A step's `timeout` counts its own generation, not the wait for the shared local model.

The real queue and lock of `agents/local.py` serialize the calls; the generation itself is a
fake (the real model is not the subject here: see tests/test_local_model.py for it). One
generation holds the model while a step with a short timeout waits longer than its timeout.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic_ai.messages import ModelMessage, ModelRequest
from pydantic_ai.models import ModelRequestParameters
from pydantic_ai.usage import RequestUsage
from rich.console import Console

from agentmill.agents import local
from agentmill.agents.local import LocalModel
from agentmill.agents.models import override_models
from agentmill.cli.live import ProgressView
from agentmill.engine.engine import Engine
from agentmill.spec.loader import load_project_text
from agentmill.store import EventRecord, RunRecord, RunStatus

TIMEOUT = 1.0
"""Seconds: what the step does besides waiting must fit in it even on a busy machine."""

CONFIG = f"""
version: 1
models: {{default: "local:smollm2"}}
agents:
  a: {{model: default, retries: 0}}
workflows:
  w:
    steps:
      - {{id: s, agent: a, prompt: "{{{{ inputs.prompt }}}}", timeout: {TIMEOUT}s}}
    inputs: {{prompt: {{type: string}}}}
"""


class FakeGenerations:
    """Stands in for llama.cpp behind the real engine lock: "hold" generates until released,
    "endless" until it is stopped, anything else answers at once."""

    def __init__(self, model: LocalModel) -> None:
        self.model = model
        self.holding = threading.Event()
        self.release = threading.Event()

    def generate(
        self,
        loaded: object,
        generation: Any,
        emit: Callable[[str], None],
        stop: threading.Event,
    ) -> Any:
        prompt = generation.turns[-1]["content"]
        if prompt == "hold":
            self.holding.set()
            self.release.wait(timeout=30)
        elif prompt == "endless":
            stop.wait(timeout=30)
        emit(f"answer to {prompt}")
        return local._Outcome(  # pyright: ignore[reportPrivateUsage]
            usage=RequestUsage(input_tokens=3, output_tokens=3), finish_reason="stop"
        )


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeGenerations]:
    fake = FakeGenerations(LocalModel(tmp_path / "fake.gguf", model_name="fake"))

    def load(path: Path, n_ctx: int) -> object:
        return object()

    monkeypatch.setattr(local, "_load", load)
    monkeypatch.setattr(local, "_generate", fake.generate)
    try:
        with override_models(lambda label: fake.model):
            yield fake
    finally:
        fake.release.set()


@pytest.fixture
def engine(sqlite_engine: Engine) -> Engine:
    return sqlite_engine


async def _hold_the_model(fake: FakeGenerations) -> asyncio.Task[Any]:
    """Another call generating on the same local model, until `fake.release`."""
    messages: list[ModelMessage] = [ModelRequest.user_text_prompt("hold")]
    task = asyncio.create_task(fake.model.request(messages, None, ModelRequestParameters()))
    while not fake.holding.is_set():
        await asyncio.sleep(0.01)
    return task


async def _submit(engine: Engine, prompt: str) -> RunRecord:
    spec = load_project_text(CONFIG, "t.yaml").spec
    return await engine.submit(spec, "w", {"prompt": prompt})


async def test_waiting_for_the_local_model_does_not_count_against_the_timeout(
    engine: Engine, fake: FakeGenerations
) -> None:
    holder = await _hold_the_model(fake)

    run = await _submit(engine, "quick")
    events: list[EventRecord] = []
    async for event in engine.follow(run.id):
        events.append(event)
        if event.kind == "step_waiting":
            # Held for twice the step's timeout while the step waits its turn.
            await asyncio.sleep(2 * TIMEOUT)
            fake.release.set()
    await holder

    final = await engine.store.get_run(run.id)
    assert final.status is RunStatus.SUCCEEDED, final.error
    assert final.outputs == {"s": "answer to quick"}
    waiting = [e for e in events if e.kind == "step_waiting"]
    assert [e.data for e in waiting] == [{"waiting_for": "the local model"}]


async def test_the_timeout_still_limits_the_generation_itself(
    engine: Engine, fake: FakeGenerations
) -> None:
    run = await _submit(engine, "endless")
    final = await asyncio.wait_for(engine.wait(run.id), 30)
    assert final.status is RunStatus.FAILED
    assert f"timed out after {TIMEOUT:g}s" in (final.error or "")


def test_the_live_view_says_what_a_step_waits_for() -> None:
    console = Console(force_terminal=False, record=True, width=100)
    with ProgressView(console, step_ids=["s"]) as view:
        view.handle(_event("step_started"))
        view.handle(_event("step_waiting", waiting_for="the local model"))
    assert "s waits for the local model (other steps are using it)" in console.export_text()


def _event(kind: str, **data: object) -> EventRecord:
    return EventRecord(run_id="r", seq=1, kind=kind, step="s", attempt=1, data=data, ts=0.0)
