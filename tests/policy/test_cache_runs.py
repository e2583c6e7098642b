"""Runs of real workflows with a cached agent: the secret they need, hits that replay the
stream, tenants, and a cache whose database fails."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from pydantic import SecretStr
from pydantic_ai.models.test import TestModel

from agentmill.agents.base import StepRequest, StepResult
from agentmill.agents.llm import LLMAgent
from agentmill.agents.models import override_models
from agentmill.engine.engine import Engine
from agentmill.engine.plan import build_plan
from agentmill.errors import UserError
from agentmill.policy.cache import (
    CachedAgent,
    CacheSecretMissing,
    ResponseCache,
    cache_key,
    check_cache_secret,
    close_response_cache,
)
from agentmill.settings import Settings
from agentmill.spec.loader import load_project_text
from agentmill.store import RunStatus, Store
from tests.engine.helpers import run_yaml
from tests.fakes import ScriptedModel
from tests.policy.cache_support import IDENTITY, SECRET, OpenCache, rows

# the secret


PROJECT = """
version: 1
agents:
  writer:
    model: openai:gpt-4o
    instructions: be brief
    cache: {ttl: 1h}
  terse:
    model: openai:gpt-4o
    instructions: be terse
    cache: {ttl: 1h}
  other:
    model: anthropic:claude-sonnet-4-5
    instructions: be brief
    cache: {ttl: 1h}
  grader:
    model: openai:gpt-4o
    cache: {ttl: 1h}
    output:
      type: object
      properties: {score: {type: integer}}
      required: [score]
  plain:
    model: openai:gpt-4o
    instructions: be brief
workflows:
  w:
    inputs: {topic: {type: string, default: cats}}
    steps:
      - {id: a, agent: writer, prompt: "write about {{ inputs.topic }}"}
  terse:
    steps:
      - {id: a, agent: terse, prompt: "write about cats"}
  other:
    steps:
      - {id: a, agent: other, prompt: "write about cats"}
  grade:
    steps:
      - {id: g, agent: grader, prompt: "grade cats"}
  plain:
    steps:
      - {id: a, agent: plain, prompt: "write about cats"}
"""


def test_a_missing_secret_is_refused_with_how_to_make_one(tmp_path: Any) -> None:
    spec = load_project_text(PROJECT, "test.yaml").spec
    settings = Settings(home=tmp_path)
    with pytest.raises(CacheSecretMissing) as caught:
        check_cache_secret(build_plan(spec, "w"), settings)
    message = str(caught.value)
    assert "AGENTMILL_CACHE_SECRET" in message
    assert "python -c 'import secrets; print(secrets.token_hex(32))'" in message
    assert "'writer'" in message
    assert isinstance(caught.value, UserError)
    short = settings.model_copy(update={"cache_secret": SecretStr("short")})
    with pytest.raises(CacheSecretMissing, match="shorter than 16"):
        check_cache_secret(build_plan(spec, "w"), short)
    check_cache_secret(build_plan(spec, "plain"), settings)  # no cache, no secret needed
    with_secret = settings.model_copy(update={"cache_secret": SecretStr(SECRET)})
    check_cache_secret(build_plan(spec, "w"), with_secret)


async def test_submit_refuses_a_cached_workflow_without_a_secret(engine: Engine) -> None:
    spec = load_project_text(PROJECT, "test.yaml").spec
    before = await engine.store.list_runs(limit=1000)
    with pytest.raises(UserError, match="AGENTMILL_CACHE_SECRET"):
        await engine.submit(spec, "w", {})
    assert await engine.store.list_runs(limit=1000) == before  # the PG database is shared


# whole runs


@pytest.fixture
async def cache_engine(cache_settings: Settings) -> AsyncIterator[Engine]:
    engine = Engine(cache_settings)
    await engine.start()
    try:
        yield engine
    finally:
        if engine._executor is not None:
            await close_response_cache(engine._executor.policies)
        await engine.stop()


@pytest.fixture
def model() -> Iterator[ScriptedModel]:
    scripted = ScriptedModel(reply=lambda prompt: " ".join([f"about {prompt}"] * 60))
    with override_models(lambda label: scripted.model(label)):
        yield scripted


async def test_a_second_identical_run_makes_no_model_call_and_replays_the_stream(
    cache_engine: Engine, model: ScriptedModel
) -> None:
    first, _ = await run_yaml(cache_engine, PROJECT, "w")
    second, events = await run_yaml(cache_engine, PROJECT, "w")
    assert first.status is RunStatus.SUCCEEDED, first.error
    assert second.status is RunStatus.SUCCEEDED, second.error
    assert model.calls == ["write about cats"]
    [step] = await cache_engine.store.steps(second.id)
    assert step.output == (await cache_engine.store.steps(first.id))[0].output
    assert step.model == "openai:gpt-4o"
    assert step.cost_usd == 0.0
    assert step.usage == {
        "input_tokens": 0,
        "output_tokens": 0,
        "cache_read_tokens": 0,
        "requests": 0,
    }
    assert step.details is not None
    assert step.details["cached"] is True
    assert (
        step.details["cache_key"]
        == cache_key(
            "default",
            {
                "model": "openai:gpt-4o",
                "instructions": "be brief",
                "settings": {},
                "output_schema": None,
            },
            "write about cats",
        )[:12]
    )
    chunks = [e.data["text"] for e in events if e.kind == "step_output"]
    assert len(chunks) > 1
    assert "".join(chunks) == step.output
    finished = next(e for e in events if e.kind == "step_finished")
    assert finished.data["details"]["cached"] is True


async def test_other_prompt_instructions_or_model_miss(
    cache_engine: Engine, model: ScriptedModel
) -> None:
    await run_yaml(cache_engine, PROJECT, "w")
    await run_yaml(cache_engine, PROJECT, "w", {"topic": "dogs"})
    await run_yaml(cache_engine, PROJECT, "terse")
    await run_yaml(cache_engine, PROJECT, "other")
    await run_yaml(cache_engine, PROJECT, "plain")
    await run_yaml(cache_engine, PROJECT, "plain")  # not cached: calls every time
    assert model.calls == ["write about cats", "write about dogs"] + ["write about cats"] * 4
    await run_yaml(cache_engine, PROJECT, "terse")
    await run_yaml(cache_engine, PROJECT, "other")
    assert len(model.calls) == 6


async def test_structured_output_runs_are_cached(cache_engine: Engine) -> None:
    calls: list[str] = []

    def factory(label: str) -> TestModel:
        calls.append(label)
        return TestModel(custom_output_args={"score": 7})

    with override_models(factory):
        first, _ = await run_yaml(cache_engine, PROJECT, "grade")
        second, events = await run_yaml(cache_engine, PROJECT, "grade")
    assert first.status is RunStatus.SUCCEEDED, first.error
    [step] = await cache_engine.store.steps(second.id)
    assert step.output == {"score": 7}
    assert step.details is not None
    assert step.details["cached"] is True
    assert not [e for e in events if e.kind == "step_output"]


async def test_tenants_never_share_entries(
    cache_engine: Engine, model: ScriptedModel, store: Store
) -> None:
    spec = load_project_text(PROJECT, "test.yaml").spec
    for tenant in ("acme", "globex", "acme", "globex"):
        run = await cache_engine.submit(spec, "w", {}, tenant=tenant)
        assert (await cache_engine.wait(run.id)).status is RunStatus.SUCCEEDED
    assert model.calls == ["write about cats"] * 2
    found = await rows(store)
    assert sorted(row["tenant"] for row in found) == ["acme", "globex"]
    acme_key = next(row["key"] for row in found if row["tenant"] == "acme")
    cache = ResponseCache.open(cache_engine.settings, memory_trust=0)
    try:
        assert await cache.get("globex", acme_key) is None  # globex can never read acme's row
    finally:
        await cache.aclose()


# robustness


class _Context:
    def __init__(self) -> None:
        self.texts: list[str] = []

    async def emit_text(self, text: str) -> None:
        self.texts.append(text)


def _request(prompt: str) -> StepRequest:
    return StepRequest(run_id="r", step_id="s", prompt=prompt)


async def test_a_failing_database_never_fails_the_step(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(home=tmp_path / "unmigrated", cache_secret=SecretStr(SECRET))
    (tmp_path / "unmigrated").mkdir()
    cache = ResponseCache.open(settings)  # no am_cache table there: every query fails
    scripted = ScriptedModel()
    llm = LLMAgent(model=scripted.model(), label="openai:gpt-4o")
    agent = CachedAgent(llm, cache=cache, tenant="t", identity=llm.identity(), ttl=60)
    try:
        with caplog.at_level(logging.WARNING, logger="agentmill.cache"):
            for _ in range(2):
                result = await agent.run(_request("p"), _Context())
                assert result.output == "echo: p"
    finally:
        await cache.aclose()
    assert "response cache read failed" in caplog.text
    assert "response cache write failed" in caplog.text


async def test_answers_of_a_fallback_model_are_not_cached(
    open_cache: OpenCache, store: Store
) -> None:
    cache = open_cache()
    scripted = ScriptedModel()
    fallback = LLMAgent(model=scripted.model(), label="anthropic:claude-sonnet-4-5")
    agent = CachedAgent(fallback, cache=cache, tenant="t", identity=IDENTITY, ttl=60)
    result: StepResult = await agent.run(_request("p"), _Context())
    assert result.model == "anthropic:claude-sonnet-4-5"
    await agent.run(_request("p"), _Context())
    assert len(scripted.calls) == 2
    assert await rows(store) == []
