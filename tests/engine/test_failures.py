"""Retries with backoff, timeouts, a failing branch, resume, and cancellation."""

from __future__ import annotations

import asyncio

from pydantic_ai.exceptions import ModelHTTPError

from agentmill.agents.models import override_models
from agentmill.engine.engine import Engine
from agentmill.spec.loader import load_project_text
from agentmill.store import RunStatus, StepStatus
from tests.engine.helpers import kinds, run_yaml
from tests.fakes import ScriptedModel

RETRYING = """
version: 1
agents:
  a: {model: openai:gpt-4o, retries: 2}
workflows:
  w:
    steps:
      - {id: flaky, agent: a, prompt: "flaky", backoff: 10ms}
"""


def _http(status: int) -> ModelHTTPError:
    return ModelHTTPError(status_code=status, model_name="gpt-4o", body={"error": "x"})


async def test_transient_errors_are_retried_until_success(engine: Engine) -> None:
    fake = ScriptedModel(fail=lambda prompt, n: _http(503) if n <= 2 else None)
    with override_models(fake.model):
        run, events = await run_yaml(engine, RETRYING)
    assert run.status is RunStatus.SUCCEEDED
    assert fake.count("flaky") == 3
    assert kinds(events, "flaky").count("step_retrying") == 2
    finished = next(e for e in events if e.kind == "step_finished")
    assert finished.attempt == 3
    (step,) = await engine.store.steps(run.id)
    assert step.attempt == 3


async def test_client_errors_are_not_retried(engine: Engine) -> None:
    fake = ScriptedModel(fail=lambda prompt, n: _http(400))
    with override_models(fake.model):
        run, events = await run_yaml(engine, RETRYING)
    assert run.status is RunStatus.FAILED
    assert fake.count("flaky") == 1
    assert "HTTP 400" in (run.error or "")
    assert "step_retrying" not in kinds(events, "flaky")


async def test_retries_are_exhausted_then_the_run_fails(engine: Engine) -> None:
    fake = ScriptedModel(fail=lambda prompt, n: _http(503))
    with override_models(fake.model):
        run, _ = await run_yaml(engine, RETRYING)
    assert run.status is RunStatus.FAILED
    assert fake.count("flaky") == 3
    assert (
        run.error == "step 'flaky' failed after 3 attempts: model openai:gpt-4o answered HTTP 503"
    )


TIMEOUT = """
version: 1
agents:
  a: {model: openai:gpt-4o}
workflows:
  w:
    steps:
      - {id: slow, agent: a, prompt: "slow", timeout: 200ms, retries: 1, backoff: 10ms}
"""


async def test_a_step_past_its_timeout_is_retried_then_fails(engine: Engine) -> None:
    fake = ScriptedModel(latency=5)
    with override_models(fake.model):
        run, events = await run_yaml(engine, TIMEOUT)
    assert run.status is RunStatus.FAILED
    assert fake.count("slow") == 2
    assert run.error == "step 'slow' failed after 2 attempts: timed out after 0.2s"
    assert kinds(events, "slow").count("step_started") == 2


BRANCHES = """
version: 1
agents:
  a: {model: openai:gpt-4o}
workflows:
  w:
    steps:
      - {id: good, agent: a, prompt: "good"}
      - {id: bad, agent: a, prompt: "bad"}
      - {id: after-bad, agent: a, needs: [bad], prompt: "after {{ steps.bad.output }}"}
      - {id: after-good, agent: a, needs: [good], prompt: "after {{ steps.good.output }}"}
"""


async def test_a_failed_branch_blocks_dependents_and_resume_reruns_only_it(engine: Engine) -> None:
    broken = True
    fake = ScriptedModel(fail=lambda p, n: _http(400) if p == "bad" and broken else None)
    with override_models(fake.model):
        run, events = await run_yaml(engine, BRANCHES)
        assert run.status is RunStatus.FAILED
        assert "step_blocked" in kinds(events, "after-bad")
        assert fake.count("after echo: good") == 1
        assert not any(p.startswith("after echo: bad") for p in fake.calls)

        broken = False
        await engine.resume(run.id)
        resumed = await engine.wait(run.id)
    assert resumed.status is RunStatus.SUCCEEDED
    assert fake.count("good") == 1
    assert fake.count("after echo: good") == 1
    assert fake.count("bad") == 2
    assert fake.count("after echo: bad") == 1
    statuses = {s.key: s.status for s in await engine.store.steps(run.id)}
    assert set(statuses.values()) == {StepStatus.SUCCEEDED}


CHAIN = """
version: 1
agents:
  a: {model: openai:gpt-4o}
workflows:
  w:
    steps:
      - {id: first, agent: a, prompt: "first"}
      - {id: second, agent: a, needs: [first], prompt: "second"}
"""


async def test_cancel_stops_a_running_run_and_keeps_finished_work(engine: Engine) -> None:
    fake = ScriptedModel(latency=0.3)
    loaded = load_project_text(CHAIN.replace('second"}', 'second", timeout: 1h}'), "t.yaml")
    with override_models(fake.model):
        run = await engine.submit(loaded.spec, "w", {})
        async for event in engine.follow(run.id):
            if event.kind == "step_started" and event.step == "second":
                break
        await engine.cancel(run.id)
        cancelled = await engine.wait(run.id)
    assert cancelled.status is RunStatus.CANCELLED
    steps = {s.key: s.status for s in await engine.store.steps(run.id)}
    assert steps["first"] is StepStatus.SUCCEEDED
    assert steps["second"] is StepStatus.RUNNING


async def test_cancel_requested_from_elsewhere_is_picked_up(engine: Engine) -> None:
    fake = ScriptedModel(latency=5)
    loaded = load_project_text(CHAIN, "t.yaml")
    with override_models(fake.model):
        run = await engine.submit(loaded.spec, "w", {})
        while not fake.calls:
            await asyncio.sleep(0.02)
        await engine.store.update_run(run.id, cancel_requested=True)
        cancelled = await asyncio.wait_for(engine.wait(run.id), timeout=10)
    assert cancelled.status is RunStatus.CANCELLED


async def test_log_records_carry_run_and_step_ids(engine: Engine) -> None:
    import logging

    from agentmill.logs import ContextFilter

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    handler.addFilter(ContextFilter())
    logger = logging.getLogger("agentmill.engine")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    fake = ScriptedModel(fail=lambda prompt, n: _http(503) if n == 1 else None)
    try:
        with override_models(fake.model):
            run, _ = await run_yaml(engine, RETRYING)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    retry = next(r for r in records if "retrying" in r.getMessage())
    assert (retry.run_id, retry.step_id) == (run.id, "flaky")  # type: ignore[attr-defined]
