"""An attempt cut off by an interruption (Ctrl-C, shutdown, drain) is not a failed attempt:
the resumed run has the step's full retries again, and no event says it failed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from pydantic_ai.exceptions import ModelHTTPError
from pydantic_ai.messages import ModelMessage
from pydantic_ai.models.function import AgentInfo, FunctionModel

from agentmill.agents.models import override_models
from agentmill.engine.engine import Engine
from agentmill.settings import Settings
from agentmill.spec.loader import load_project_text
from agentmill.store import EventRecord, RunRecord, RunStatus
from tests.conftest import started_engine
from tests.fakes import ScriptedModel

CONFIG = """
version: 1
agents:
  a: {retries: 1}
workflows:
  w:
    steps:
      - {id: s, agent: a, prompt: "p", backoff: 10ms}
"""


def _unavailable(prompt: str, call: int) -> BaseException:
    return ModelHTTPError(status_code=503, model_name="m", body={"error": "down"})


class Gate:
    """A model whose calls wait until `opened`, then fail with a 503 (the provider's
    connection dropped by the shutdown, say); `entered` is set by the first call."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.opened = asyncio.Event()
        self.calls = 0

    def model(self, label: str) -> FunctionModel:
        return FunctionModel(stream_function=self._stream, model_name=label)

    async def _stream(self, messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
        self.calls += 1
        self.entered.set()
        await self.opened.wait()
        raise _unavailable("p", self.calls)
        yield ""  # an async generator


async def _submit(engine: Engine) -> RunRecord:
    return await engine.submit(load_project_text(CONFIG, "t.yaml").spec, "w", {})


async def _resume_failing(settings: Settings, run_id: str) -> tuple[RunRecord, int]:
    """Resume the run on a fresh engine whose model always answers 503."""
    failing = ScriptedModel(fail=_unavailable)
    async with started_engine(settings) as engine:
        with override_models(failing.model):
            await engine.resume(run_id)
            final = await asyncio.wait_for(engine.wait(run_id), 30)
    return final, len(failing.calls)


async def _events(settings: Settings, run_id: str) -> list[EventRecord]:
    async with started_engine(settings) as engine:
        return [e async for e in engine.follow(run_id)]


async def test_an_attempt_interrupted_by_a_stop_is_not_counted_as_a_failure(
    sqlite_settings: Settings,
) -> None:
    slow = ScriptedModel(latency=30)
    async with started_engine(sqlite_settings) as engine:
        with override_models(slow.model):
            run = await _submit(engine)
            while not slow.calls:
                await asyncio.sleep(0.01)
    # The engine stopped: the run is interrupted with its attempt cut off.

    final, calls = await _resume_failing(sqlite_settings, run.id)
    assert calls == 2  # the full retries: one attempt and one retry
    assert final.status is RunStatus.FAILED
    assert "failed after 2 attempts" in (final.error or "")


async def test_an_attempt_failing_during_a_drain_is_not_retried_nor_counted(
    sqlite_settings: Settings,
) -> None:
    gate = Gate()
    async with started_engine(sqlite_settings) as engine:
        with override_models(gate.model):
            run = await _submit(engine)
            await gate.entered.wait()
            stopping = asyncio.create_task(engine.stop(grace=30))
            while not engine.drain.draining:
                await asyncio.sleep(0.01)
            gate.opened.set()  # fails while the engine drains: cut off by the shutdown
            await asyncio.wait_for(stopping, 20)  # no need to wait the whole grace
    assert gate.calls == 1  # no retry was started while draining

    final, calls = await _resume_failing(sqlite_settings, run.id)
    assert calls == 2
    assert "failed after 2 attempts" in (final.error or "")
    events = await _events(sqlite_settings, run.id)
    kinds = [e.kind for e in events]
    interrupted = kinds.index("run_interrupted")
    assert "step_retrying" not in kinds[:interrupted]
    assert kinds[interrupted + 1 :].count("step_retrying") == 1
