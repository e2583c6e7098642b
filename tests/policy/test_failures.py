"""Retries, circuit breakers and fallback chains, on workflows run by the engine with
FunctionModels raising pydantic-ai's real provider errors."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx2
import openai
import pytest
from pydantic_ai.exceptions import ContentFilterError, ModelHTTPError, UnexpectedModelBehavior
from pydantic_ai.messages import ModelMessage
from pydantic_ai.models.function import AgentInfo, FunctionModel

from agentmill.agents.base import Agent, StepContext, StepRequest, StepResult
from agentmill.agents.errors import map_provider_errors
from agentmill.agents.models import override_models
from agentmill.engine.engine import Engine
from agentmill.errors import BudgetExceeded, ProviderError
from agentmill.policy.breaker import (
    BreakerAgent,
    Breakers,
    CircuitBreaker,
    CircuitOpen,
    State,
    key_of,
)
from agentmill.policy.fallback import AllModelsFailed, FallbackAgent
from agentmill.policy.retry import (
    MAX_RETRY_AFTER,
    AttemptNote,
    backoff,
    noting,
    retry_delay,
    retryable,
)
from agentmill.spec.models import BreakerSpec
from agentmill.store import EventRecord, RunStatus, StepStatus
from tests.engine.helpers import run_yaml
from tests.fakes import prompt_of

PRIMARY = "openai:gpt-4o"
SECOND = "anthropic:claude-sonnet-4-5"

Script = Callable[[str, int], BaseException | None]


def http(status: int, *, headers: dict[str, str] | None = None, via_cause: bool = False) -> Any:
    """A ModelHTTPError as pydantic-ai raises it; with `via_cause` the headers are only on
    the OpenAI SDK exception it was raised from (as older pydantic-ai versions did)."""
    body = {"error": {"message": f"scripted {status}", "type": "scripted"}}
    if not via_cause:
        return ModelHTTPError(status, "scripted", body, headers=headers)
    request = httpx2.Request("POST", "http://provider.invalid/v1/chat/completions")
    response = httpx2.Response(status, headers=headers or {}, request=request)
    error = ModelHTTPError(status, "scripted", body)
    error.__cause__ = openai.APIStatusError("scripted", response=response, body=body)
    return error


@dataclass
class Providers:
    """One scripted FunctionModel per label: failures per (prompt, n-th call), latency, and a
    call log of (label, prompt)."""

    script: dict[str, Script] = field(default_factory=dict)
    latency: float = 0.0
    partial: str | None = None
    """Text streamed before a scripted failure is raised."""
    calls: list[tuple[str, str]] = field(default_factory=list)

    def model(self, label: str) -> FunctionModel:
        async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
            prompt = prompt_of(messages)
            self.calls.append((label, prompt))
            if self.latency:
                await asyncio.sleep(self.latency)
            error = self.script.get(label, lambda p, n: None)(prompt, self.count(label, prompt))
            if error is not None:
                if self.partial:
                    yield self.partial
                raise error
            yield f"{label} says {prompt}"

        return FunctionModel(stream_function=stream, model_name=label)

    def count(self, label: str, prompt: str | None = None) -> int:
        return sum(1 for lbl, p in self.calls if lbl == label and prompt in (None, p))


def always(error: Callable[[], BaseException]) -> Script:
    return lambda prompt, n: error()


def of(events: list[EventRecord], kind: str) -> list[EventRecord]:
    return [e for e in events if e.kind == kind]


def project(
    *, retries: int = 0, fallback: list[str] | None = None, breaker: str = "", extra: str = ""
) -> str:
    fallbacks = f", fallback: {fallback}" if fallback else ""
    return f"""
version: 1
{breaker}
agents:
  a: {{model: {PRIMARY}, retries: {retries}{fallbacks}}}
workflows:
  w:
    steps:
      - {{id: s, agent: a, prompt: "hi", backoff: 10ms{extra}}}
"""


# --- retries ---------------------------------------------------------------------------


async def test_transient_errors_are_retried_with_exponential_backoff(
    sqlite_engine: Engine,
) -> None:
    models = Providers(
        script={PRIMARY: lambda p, n: http(500 if n == 1 else 503) if n <= 2 else None}
    )
    with override_models(models.model):
        run, events = await run_yaml(sqlite_engine, project(retries=3))
    assert run.status is RunStatus.SUCCEEDED
    assert models.count(PRIMARY) == 3
    delays = [e.data["delay"] for e in of(events, "step_retrying")]
    # Equal jitter: retry n waits between half and all of 10ms * 2^(n-1).
    assert 0.005 <= delays[0] <= 0.01
    assert 0.01 <= delays[1] <= 0.02
    assert [e.data["error_kind"] for e in of(events, "step_retrying")] == ["provider"] * 2
    assert "next_model" not in of(events, "step_retrying")[0].data


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
async def test_client_errors_fail_at_once_without_retry_or_fallback(
    sqlite_engine: Engine, status: int
) -> None:
    models = Providers(script={PRIMARY: always(lambda: http(status))})
    with override_models(models.model):
        run, events = await run_yaml(sqlite_engine, project(retries=3, fallback=[SECOND]))
    assert run.status is RunStatus.FAILED
    assert models.calls == [(PRIMARY, "hi")]
    assert of(events, "step_retrying") == []
    assert f"model {PRIMARY} answered HTTP {status}" in (run.error or "")
    (step,) = await sqlite_engine.store.steps(run.id)
    assert step.details is None


@pytest.mark.parametrize(
    ("headers", "via_cause", "expected"),
    [
        ({"retry-after-ms": "150"}, True, 0.15),
        ({"Retry-After": "1"}, True, 1.0),
        ({"retry-after-ms": "120"}, False, 0.12),
    ],
)
async def test_retry_after_of_a_429_is_the_delay(
    sqlite_engine: Engine, headers: dict[str, str], via_cause: bool, expected: float
) -> None:
    def script(prompt: str, n: int) -> BaseException | None:
        return http(429, headers=headers, via_cause=via_cause) if n == 1 else None

    models = Providers(script={PRIMARY: script})
    with override_models(models.model):
        run, events = await run_yaml(sqlite_engine, project(retries=1))
    assert run.status is RunStatus.SUCCEEDED
    (retrying,) = of(events, "step_retrying")
    assert retrying.data["delay"] == expected
    started = [e.ts for e in of(events, "step_started")]
    assert started[1] - started[0] >= expected * 0.9


def test_retry_after_is_capped_and_wins_over_backoff() -> None:
    long = ProviderError("x", transient=True, retry_after=10_000)
    assert retry_delay(long, base=1.0, retry_number=1) == MAX_RETRY_AFTER
    short = ProviderError("x", transient=True, retry_after=0.5)
    assert retry_delay(short, base=30.0, retry_number=5) == 0.5
    assert 2.0 <= backoff(1.0, retry_number=3) <= 4.0


def test_provider_errors_are_mapped_with_their_retry_after() -> None:
    cases: list[tuple[BaseException, bool, float | None]] = [
        (http(429, headers={"retry-after": "3"}, via_cause=True), True, 3.0),
        (http(503), True, None),
        (http(529), True, None),
        (http(408), True, None),
        (http(400), False, None),
        (http(422), False, None),
        (ContentFilterError("filtered"), False, None),
        (UnexpectedModelBehavior("garbled"), True, None),
    ]
    for raised, transient, retry_after in cases:
        with pytest.raises(ProviderError) as caught, map_provider_errors(PRIMARY):
            raise raised
        assert caught.value.transient is transient, raised
        assert caught.value.retry_after == retry_after
        assert retryable(caught.value) is transient


# --- circuit breaker -------------------------------------------------------------------

BREAKER = "breaker: {failures: 2, reset: 60s}"
PROBE_NOW = "breaker: {failures: 2, reset: 1ms}"
"""The breaker takes `reset` from the calling run's plan: a run with this config finds an
open breaker past its reset, half-open, without the test waiting for a real reset."""


async def test_breaker_opens_across_runs_skips_the_provider_then_closes_after_a_probe(
    sqlite_engine: Engine,
) -> None:
    broken = True
    models = Providers(script={PRIMARY: lambda p, n: http(500) if broken else None})
    text = project(breaker=BREAKER)
    with override_models(models.model):
        for _ in range(2):
            run, _ = await run_yaml(sqlite_engine, text)
            assert run.status is RunStatus.FAILED
        assert models.count(PRIMARY) == 2

        run, events = await run_yaml(sqlite_engine, text)
        assert run.status is RunStatus.FAILED
        assert models.count(PRIMARY) == 2  # not called while open
        assert "the circuit breaker for openai is open" in (run.error or "")
        assert of(events, "step_retrying") == []

        # Another model of the same provider is skipped too; another provider is not.
        run, _ = await run_yaml(sqlite_engine, text.replace(PRIMARY, "openai:gpt-4o-mini"))
        assert run.status is RunStatus.FAILED
        assert models.count("openai:gpt-4o-mini") == 0
        run, _ = await run_yaml(sqlite_engine, text.replace(PRIMARY, SECOND))
        assert run.status is RunStatus.SUCCEEDED

        broken = False
        run, _ = await run_yaml(sqlite_engine, project(breaker=PROBE_NOW))  # the probe
        assert run.status is RunStatus.SUCCEEDED
        run, _ = await run_yaml(sqlite_engine, text)  # closed
        assert run.status is RunStatus.SUCCEEDED
    assert models.count(PRIMARY) == 4


async def test_a_failed_probe_opens_the_breaker_again(sqlite_engine: Engine) -> None:
    models = Providers(script={PRIMARY: always(lambda: http(503))})
    text = project(breaker=BREAKER)
    with override_models(models.model):
        for _ in range(2):
            await run_yaml(sqlite_engine, text)
        await run_yaml(sqlite_engine, project(breaker=PROBE_NOW))  # the probe fails
        assert models.count(PRIMARY) == 3
        run, _ = await run_yaml(sqlite_engine, text)
    assert models.count(PRIMARY) == 3
    # Open again, for 60s from the failed probe.
    assert re.search(r"next probe in (59|60)\.\ds", run.error or "")


async def test_half_open_lets_exactly_one_probe_through_under_concurrency(
    sqlite_engine: Engine,
) -> None:
    broken = True
    models = Providers(script={PRIMARY: lambda p, n: http(500) if broken else None})
    fan_out = f"""
version: 1
{PROBE_NOW}
agents:
  a: {{model: {PRIMARY}}}
workflows:
  w:
    steps:
      - {{id: s, agent: a, prompt: "hi {{{{ item }}}}", foreach: "{{{{ [1, 2, 3, 4, 5, 6] }}}}",
          concurrency: 6}}
"""
    with override_models(models.model):
        for _ in range(2):
            await run_yaml(sqlite_engine, project(breaker=BREAKER))
        broken = False
        models.latency = 0.5  # the probe is still in flight when the other items start
        run, _ = await run_yaml(sqlite_engine, fan_out)
        assert run.status is RunStatus.FAILED
        probes = [p for _, p in models.calls if p.startswith("hi ")]
        assert len(probes) == 1
        steps = [s for s in await sqlite_engine.store.steps(run.id) if s.item_index is not None]
        assert sorted(s.status.value for s in steps) == ["failed"] * 5 + ["succeeded"]
        assert all("a probe call is in flight" in (s.error or "") for s in steps if s.error)

        run, _ = await run_yaml(sqlite_engine, fan_out)  # closed: every call goes through
    assert run.status is RunStatus.SUCCEEDED
    assert len([p for _, p in models.calls if p.startswith("hi ")]) == 1 + 6


async def test_client_errors_do_not_count_towards_the_breaker(sqlite_engine: Engine) -> None:
    models = Providers(script={PRIMARY: always(lambda: http(400))})
    with override_models(models.model):
        for _ in range(4):
            await run_yaml(sqlite_engine, project(breaker=BREAKER))
    assert models.count(PRIMARY) == 4


def test_breaker_states_with_a_clock() -> None:
    now = [0.0]
    breakers = Breakers(clock=lambda: now[0])
    spec = BreakerSpec(failures=2, reset=10)
    breaker = breakers.for_label(PRIMARY)
    assert breakers.for_label("openai:gpt-4o-mini") is breaker
    early = breaker.admit(spec, PRIMARY)
    breaker.failed(breaker.admit(spec, PRIMARY), spec)
    breaker.succeeded(breaker.admit(spec, PRIMARY))  # a success resets the count
    breaker.failed(breaker.admit(spec, PRIMARY), spec)
    assert breaker.state() is State.CLOSED
    breaker.failed(breaker.admit(spec, PRIMARY), spec)
    assert breakers.states() == {"openai": "open"}
    breaker.succeeded(early)  # admitted before it opened: stale, ignored
    assert breaker.state() is State.OPEN
    with pytest.raises(CircuitOpen, match=r"next probe in 10\.0s"):
        breaker.admit(spec, PRIMARY)
    now[0] = 10.0
    probe = breaker.admit(spec, PRIMARY)
    assert probe.probe
    with pytest.raises(CircuitOpen, match="a probe call is in flight"):
        breaker.admit(spec, PRIMARY)
    breaker.released(probe)  # e.g. a 4xx or a budget refusal: no verdict, the slot is free
    probe = breaker.admit(spec, PRIMARY)
    breaker.succeeded(probe)
    assert breaker.state() is State.CLOSED
    assert not breaker.admit(spec, PRIMARY).probe


class _Raising(Agent):
    def __init__(self, error: Exception) -> None:
        self.error = error
        self.calls = 0

    async def run(self, request: StepRequest, context: StepContext) -> StepResult:
        self.calls += 1
        raise self.error


class _Quiet:
    async def emit_text(self, text: str) -> None:
        pass


async def test_budget_refusals_and_4xx_do_not_trip_the_breaker() -> None:
    spec = BreakerSpec(failures=1, reset=60)
    refusal = BudgetExceeded(level="run", unit="usd", limit=1, spent=1, reserved=0, needed=0.1)
    request = StepRequest(run_id="r", step_id="s", prompt="p")
    for error in (refusal, ProviderError("HTTP 400", transient=False), ValueError("bug")):
        breaker = CircuitBreaker("openai")
        agent = BreakerAgent(_Raising(error), breaker=breaker, label=PRIMARY, spec=spec)
        for _ in range(3):
            with pytest.raises(type(error)):
                await agent.run(request, _Quiet())
        assert breaker.state() is State.CLOSED
    breaker = CircuitBreaker("openai")
    agent = BreakerAgent(
        _Raising(ProviderError("HTTP 503", transient=True)),
        breaker=breaker,
        label=PRIMARY,
        spec=spec,
    )
    with pytest.raises(ProviderError):
        await agent.run(request, _Quiet())
    with pytest.raises(CircuitOpen):
        await agent.run(request, _Quiet())
    assert isinstance(agent._inner, _Raising)
    assert agent._inner.calls == 1


def test_breaker_keys_are_per_provider_and_per_server() -> None:
    assert key_of("openai:gpt-4o") == "openai"
    assert key_of("anthropic:claude-sonnet-4-5") == "anthropic"
    assert key_of("openai:llama@http://127.0.0.1:11434/v1/") == "openai@http://127.0.0.1:11434/v1"
    assert key_of("google-vertex:claude-3@20240229") == "google-vertex"


# --- fallback chains -------------------------------------------------------------------


async def test_fallback_after_retries_are_exhausted_is_recorded(engine: Engine) -> None:
    models = Providers(script={PRIMARY: always(lambda: http(503))}, partial="half an ans")
    with override_models(models.model):
        run, events = await run_yaml(engine, project(retries=1, fallback=[SECOND]))
    assert run.status is RunStatus.SUCCEEDED
    assert [label for label, _ in models.calls] == [PRIMARY, PRIMARY, SECOND]
    expected = [{"model": PRIMARY, "error": "answered HTTP 503", "attempts": 2}]
    (step,) = await engine.store.steps(run.id)
    assert step.model == SECOND
    assert step.output == f"{SECOND} says hi"
    assert step.details == {"fallback": expected}
    assert step.attempt == 3
    (finished,) = of(events, "step_finished")
    assert finished.data["details"] == {"fallback": expected}
    assert finished.data["model"] == SECOND
    retrying = [(e.data["next_model"], e.data["delay"]) for e in of(events, "step_retrying")]
    assert retrying[0][0] == PRIMARY
    assert retrying[0][1] > 0
    assert retrying[1] == (SECOND, 0.0)
    # The partial output of failed attempts is superseded by the next attempt.
    assert [e.data.get("supersedes") for e in of(events, "step_started")] == [None, 1, 2]
    assert [e.attempt for e in of(events, "step_output")][:2] == [1, 2]


async def test_an_open_breaker_sends_calls_to_the_fallback_at_once(
    sqlite_engine: Engine,
) -> None:
    models = Providers(script={PRIMARY: always(lambda: http(500))})
    text = project(retries=2, fallback=[SECOND], breaker="breaker: {failures: 1, reset: 60s}")
    with override_models(models.model):
        first, _ = await run_yaml(sqlite_engine, text)
        run, events = await run_yaml(sqlite_engine, text)
    assert first.status is RunStatus.SUCCEEDED
    assert run.status is RunStatus.SUCCEEDED
    # First run: one failure opened the breaker, so the retry went to the fallback at once.
    assert [label for label, _ in models.calls] == [PRIMARY, SECOND, SECOND]
    (first_step,) = await sqlite_engine.store.steps(first.id)
    assert first_step.details == {
        "fallback": [{"model": PRIMARY, "error": "answered HTTP 500; circuit open", "attempts": 1}]
    }
    assert of(events, "step_retrying") == []
    (step,) = await sqlite_engine.store.steps(run.id)
    assert step.attempt == 1
    assert step.model == SECOND
    (skipped,) = step.details["fallback"] if step.details else []
    assert skipped["model"] == PRIMARY
    assert skipped["attempts"] == 0
    assert "circuit breaker for openai is open" in skipped["error"]


async def test_the_final_failure_names_every_model_tried(engine: Engine) -> None:
    third = "openai:gpt-4o-mini"
    models = Providers(
        script={PRIMARY: always(lambda: http(503)), SECOND: always(lambda: http(429))}
    )
    text = project(retries=1, fallback=[SECOND, third], breaker="breaker: {failures: 2}")
    with override_models(models.model):
        run, events = await run_yaml(engine, text)
    assert run.status is RunStatus.FAILED
    # openai's breaker opened on gpt-4o's 2nd failure in a row: gpt-4o-mini was skipped.
    assert [label for label, _ in models.calls] == [PRIMARY, PRIMARY, SECOND, SECOND]
    assert run.error is not None
    assert run.error.startswith("step 's' failed after 4 attempts: all 3 models failed: ")
    for label in (PRIMARY, SECOND, third):
        assert label in run.error
    (step,) = await engine.store.steps(run.id)
    assert step.status is StepStatus.FAILED
    assert step.details is not None
    assert [t["model"] for t in step.details["fallback"]] == [PRIMARY, SECOND, third]
    (failed,) = of(events, "step_failed")
    assert failed.data["details"] == step.details


async def test_a_client_error_of_a_fallback_fails_at_once_naming_the_earlier_model(
    sqlite_engine: Engine,
) -> None:
    models = Providers(
        script={PRIMARY: always(lambda: http(502)), SECOND: always(lambda: http(400))}
    )
    with override_models(models.model):
        run, _ = await run_yaml(sqlite_engine, project(retries=1, fallback=[SECOND]))
    assert run.status is RunStatus.FAILED
    assert [label for label, _ in models.calls] == [PRIMARY, PRIMARY, SECOND]
    assert f"model {SECOND} answered HTTP 400" in (run.error or "")
    assert f"after falling back from {PRIMARY}" in (run.error or "")


async def test_a_timeout_counts_as_a_failure_of_the_model(sqlite_engine: Engine) -> None:
    models = Providers()

    def factory(label: str) -> FunctionModel:
        async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
            models.calls.append((label, prompt_of(messages)))
            if label == PRIMARY:
                await asyncio.sleep(5)
            yield f"{label} answered"

        return FunctionModel(stream_function=stream, model_name=label)

    with override_models(factory):
        run, events = await run_yaml(
            sqlite_engine, project(fallback=[SECOND], extra=", timeout: 100ms")
        )
    assert run.status is RunStatus.SUCCEEDED
    (step,) = await sqlite_engine.store.steps(run.id)
    assert step.details == {"fallback": [{"model": PRIMARY, "error": "timed out", "attempts": 1}]}
    (retrying,) = of(events, "step_retrying")
    assert retrying.data["error_kind"] == "timeout"
    assert retrying.data["next_model"] == SECOND


async def test_foreach_items_keep_their_own_place_in_the_chain(sqlite_engine: Engine) -> None:
    models = Providers(script={PRIMARY: lambda p, n: http(500) if p == "item 1" else None})
    text = f"""
version: 1
agents:
  a: {{model: {PRIMARY}, fallback: [{SECOND}]}}
workflows:
  w:
    steps:
      - {{id: s, agent: a, prompt: "item {{{{ item }}}}", foreach: "{{{{ [0, 1, 2] }}}}"}}
"""
    with override_models(models.model):
        run, _ = await run_yaml(sqlite_engine, text)
    assert run.status is RunStatus.SUCCEEDED
    steps = {s.key: s for s in await sqlite_engine.store.steps(run.id) if s.item_index is not None}
    assert steps["s[0]"].model == PRIMARY
    assert steps["s[0]"].details is None
    assert steps["s[2]"].model == PRIMARY
    assert steps["s[2]"].details is None
    assert steps["s[1]"].model == SECOND
    assert steps["s[1]"].details == {
        "fallback": [{"model": PRIMARY, "error": "answered HTTP 500", "attempts": 1}]
    }


class _Answering(Agent):
    def __init__(self, label: str) -> None:
        self.label = label

    async def run(self, request: StepRequest, context: StepContext) -> StepResult:
        return StepResult(output="ok", model=self.label)


async def test_every_model_behind_an_open_circuit_fails_without_a_call() -> None:
    spec = BreakerSpec(failures=1, reset=60)
    breakers = Breakers()
    chain: list[Agent] = []
    for label in (PRIMARY, SECOND):
        breaker = breakers.for_label(label)
        breaker.failed(breaker.admit(spec, label), spec)
        chain.append(BreakerAgent(_Answering(label), breaker=breaker, label=label, spec=spec))
    agent = FallbackAgent(chain, [PRIMARY, SECOND])
    note = AttemptNote(retries=3)
    with noting(note), pytest.raises(AllModelsFailed) as caught:
        await agent.run(StepRequest(run_id="r", step_id="s", prompt="p"), _Quiet())
    assert not retryable(caught.value)
    assert [t["model"] for t in note.details["fallback"]] == [PRIMARY, SECOND]
    assert "all 2 models failed" in str(caught.value)
