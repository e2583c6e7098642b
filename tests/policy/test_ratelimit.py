"""Shared rate limits on a real database: GCRA slots, token accounting, concurrency leases,
real worker processes against one database, crashes and cancellation."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic_ai.messages import ModelMessage
from pydantic_ai.models.function import AgentInfo, FunctionModel
from sqlalchemy import event

from agentmill.agents.base import StepRequest
from agentmill.agents.llm import LLMAgent
from agentmill.agents.models import model_label, override_models
from agentmill.engine.engine import Engine
from agentmill.policy.ratelimit import (
    DEFAULT_OUTPUT_TOKENS,
    RateLimited,
    RateLimiter,
    estimate_tokens,
    limit_rules,
    rate_limited,
)
from agentmill.settings import Settings
from agentmill.spec.loader import load_project_text
from agentmill.spec.models import RateLimitSpec
from agentmill.store import RunStatus, Store
from agentmill.store.ratelimits import RateLimitStore, RateRule
from agentmill.store.tables import rate_leases, rate_limits
from tests.engine.helpers import run_yaml
from tests.fixtures.ratelimit_worker import SLOT, make_calls, recording_shared

ROOT = Path(__file__).resolve().parents[2]


class _Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class _Quiet:
    async def emit_text(self, text: str) -> None:
        return None


@pytest.fixture
async def store(isolated_settings: Settings) -> AsyncIterator[Store]:
    store = await Store.open(isolated_settings.resolved_database_url)
    try:
        yield store
    finally:
        await store.close()


def _specs(limits: dict[str, dict[str, int]]) -> dict[str, RateLimitSpec]:
    return {key: RateLimitSpec.model_validate(value) for key, value in limits.items()}


def _request(prompt: str = "hi", index: int = 0) -> StepRequest:
    return StepRequest(run_id="r", step_id="s", index=index, prompt=prompt)


def _max_in_window(starts: list[float], width: float) -> int:
    """The most starts in any half-open window [t, t + width) (t at a start)."""
    ordered = sorted(starts)
    best, j = 0, 0
    for i, start in enumerate(ordered):
        j = max(j, i)
        while j < len(ordered) and ordered[j] < start + width:
            j += 1
        best = max(best, j - i)
    return best


def _check_rate(records: list[dict[str, Any]], interval: float) -> None:
    """Calls keep to one start per `interval`.

    The slots the limiter gave out are at least an interval apart (less a margin for
    floating-point epochs), so any window of k intervals holds at most k of them. The
    measured starts hold at most k, plus one for the window's closing edge, plus the
    calls that a busy event loop started late: up to the largest lag seen between a slot
    and its start, in intervals.
    """
    slots = sorted(r["slot"] for r in records)
    gaps = [later - earlier for earlier, later in itertools.pairwise(slots)]
    assert min(gaps) >= interval - 1e-4, gaps
    starts = [r["start"] for r in records]
    late = math.ceil(max(0.0, *(r["start"] - r["slot"] for r in records)) / interval)
    for k in (1, 5, 10, 20):
        assert _max_in_window(starts, k * interval) <= k + 1 + late, (k, late, sorted(starts))


# which limits a call is subject to, and its token estimate


def test_a_call_is_subject_to_its_provider_and_exact_model_limits() -> None:
    limits = _specs({"openai": {"rpm": 600, "concurrency": 4}, "openai:gpt-4o": {"tpm": 6000}})
    rules = limit_rules("openai:gpt-4o", limits)
    assert [(r.key, r.request_interval, r.token_interval, r.concurrency) for r in rules] == [
        ("openai", 0.1, 0.0, 4),
        ("openai:gpt-4o", 0.0, 0.01, None),
    ]
    assert [r.key for r in limit_rules("openai:gpt-4o-mini", limits)] == ["openai"]
    assert limit_rules("anthropic:claude-sonnet-4-5", limits) == []
    # a model on its own server is not counted against the provider's limits
    served = "openai:llama3.2@http://127.0.0.1:11434/v1"
    assert limit_rules(served, limits) == []
    limits[served] = RateLimitSpec(concurrency=1)
    assert [r.key for r in limit_rules(served, limits)] == [served]
    assert limit_rules("openai:o3", {"openai": RateLimitSpec()}) == []


def test_token_estimate_is_prompt_length_plus_max_tokens() -> None:
    assert estimate_tokens("x" * 400, "y" * 41, 200) == 111 + 200
    assert estimate_tokens("", "", None) == DEFAULT_OUTPUT_TOKENS


def test_the_example_in_the_docs_means_what_the_docs_say() -> None:
    text = (ROOT / "docs" / "rate-limits.md").read_text()
    match = re.search(r"<!-- test: rate-limits-example -->\n```yaml\n(.*?)```", text, re.DOTALL)
    assert match is not None
    spec = load_project_text(match.group(1), "rate-limits.md").spec
    gpt4o = limit_rules(model_label(spec.models["smart"]), spec.limits)
    assert [(r.key, r.request_interval) for r in gpt4o] == [("openai", 0.12), ("openai:gpt-4o", 1)]
    assert [r.key for r in limit_rules("openai:gpt-4o-mini", spec.limits)] == ["openai"]
    served = limit_rules(model_label(spec.models["ollama"]), spec.limits)
    assert [(r.key, r.concurrency) for r in served] == [
        ("openai:llama3.2@http://127.0.0.1:11434/v1", 2)
    ]


# the store: slots, tokens and leases with a clock moved by hand


async def test_slots_are_spaced_by_the_interval_and_taken_only_within_the_lookahead(
    store: Store,
) -> None:
    clock = _Clock()
    limits = RateLimitStore(store.engine, clock=clock)
    rule = [RateRule(key="openai", request_interval=1.0)]
    starts = [(await limits.reserve(rule, tokens=0, lookahead=2.5)) for _ in range(4)]
    assert [(s.start, s.reserved) for s in starts] == [
        (1000.0, True),
        (1001.0, True),
        (1002.0, True),
        (1003.0, False),  # beyond the look-ahead: nothing taken
    ]
    clock.now = 1001.0
    again = await limits.reserve(rule, tokens=0, lookahead=2.5)
    assert (again.start, again.reserved) == (1003.0, True)
    clock.now = 2000.0  # idle for a while: no burst of saved-up slots
    later = [(await limits.reserve(rule, tokens=0, lookahead=0.5)) for _ in range(2)]
    assert [(s.start, s.reserved) for s in later] == [(2000.0, True), (2001.0, False)]


async def test_a_call_under_two_keys_starts_when_both_allow_it(store: Store) -> None:
    clock = _Clock()
    limits = RateLimitStore(store.engine, clock=clock)
    provider = RateRule(key="openai", request_interval=0.1)
    model = RateRule(key="openai:gpt-4o", request_interval=1.0)
    first = await limits.reserve([provider, model], tokens=0, lookahead=5)
    second = await limits.reserve([provider, model], tokens=0, lookahead=5)
    other = await limits.reserve([provider], tokens=0, lookahead=5)
    assert (first.start, second.start) == (1000.0, 1001.0)
    # the provider's next slot comes after the last start it allowed
    assert other.start == pytest.approx(1001.1)


async def test_tokens_are_charged_up_front_and_settled_after(store: Store) -> None:
    clock = _Clock()
    limits = RateLimitStore(store.engine, clock=clock)
    rule = [RateRule(key="openai", token_interval=0.01)]  # 6000 tokens per minute
    first = await limits.reserve(rule, tokens=100, lookahead=10)
    second = await limits.reserve(rule, tokens=100, lookahead=10)
    assert (first.start, second.start) == (1000.0, pytest.approx(1001.0))
    await limits.adjust_tokens(rule, tokens=-150)  # both used 25 of their 100
    third = await limits.reserve(rule, tokens=100, lookahead=10)
    assert third.start == pytest.approx(1000.5)
    await limits.adjust_tokens(rule, tokens=300)  # a call used 300 more than it said
    fourth = await limits.reserve(rule, tokens=1, lookahead=10)
    assert fourth.start == pytest.approx(1004.5)


async def test_leases_are_capped_released_and_expire(store: Store) -> None:
    clock = _Clock()
    limits = RateLimitStore(store.engine, clock=clock)
    caps = [("openai", 2)]
    assert await limits.acquire_leases(caps, ["a"], ttl=30)
    assert await limits.acquire_leases(caps, ["b"], ttl=30)
    assert not await limits.acquire_leases(caps, ["c"], ttl=30)
    await limits.release_leases(["a"])
    assert await limits.acquire_leases(caps, ["c"], ttl=30)
    clock.now += 20
    assert await limits.renew_leases(["c"], ttl=30) == 1  # c now lasts until 1050
    clock.now += 15  # b (until 1030) has expired
    assert await limits.leases_held("openai") == 1
    assert await limits.acquire_leases(caps, ["d"], ttl=30)
    assert not await limits.acquire_leases(caps, ["e"], ttl=30)  # full: clears expired ones
    async with store.engine.connect() as conn:
        ids = (await conn.execute(sa.select(rate_leases.c.id).order_by("id"))).scalars()
        assert list(ids) == ["c", "d"]  # the expired lease was cleared away


async def test_leases_under_two_caps_are_taken_all_or_none(store: Store) -> None:
    limits = RateLimitStore(store.engine)
    assert await limits.acquire_leases([("openai:gpt-4o", 1)], ["m1"], ttl=30)
    both = [("openai", 5), ("openai:gpt-4o", 1)]
    assert not await limits.acquire_leases(both, ["p2", "m2"], ttl=30)
    assert await limits.leases_held("openai") == 0
    await limits.release_leases(["m1"])
    assert await limits.acquire_leases(both, ["p2", "m2"], ttl=30)
    assert await limits.leases_held("openai") == 1


async def test_concurrent_reservations_never_share_a_slot(store: Store) -> None:
    # Many connections at once, no in-process line: only the database keeps them apart.
    rules = [
        RateRule(key="openai", request_interval=0.001),
        RateRule(key="openai:gpt-4o", request_interval=0.01, token_interval=0.0001),
    ]

    async def reserve(n: int) -> float:
        limits = RateLimitStore(store.engine)
        slot = await limits.reserve(rules[: 1 + n % 2], tokens=10, lookahead=1000)
        assert slot.reserved
        return slot.start

    starts = sorted(await asyncio.gather(*(reserve(n) for n in range(60))))
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    assert min(gaps) >= 0.001 - 1e-4  # the provider's interval, whatever the model's


async def test_concurrent_leases_never_exceed_the_cap(store: Store) -> None:
    async def lease(n: int) -> bool:
        limits = RateLimitStore(store.engine)
        return await limits.acquire_leases([("openai", 5)], [f"lease-{n}"], ttl=30)

    taken = await asyncio.gather(*(lease(n) for n in range(40)))
    assert sum(taken) == 5


# the policy in one process


def _recording_model(
    records: list[dict[str, Any]],
    *,
    latency: float = 0.0,
    words: int = 1,
    in_flight: list[int] | None = None,
) -> FunctionModel:
    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
        start = time.time()
        if in_flight is not None:
            in_flight[0] += 1
            in_flight[1] = max(in_flight[1], in_flight[0])
        try:
            if latency:
                await asyncio.sleep(latency)
            records.append({"start": start, "end": time.time(), "slot": SLOT.get()})
            yield " ".join(["w"] * words)
        finally:
            if in_flight is not None:
                in_flight[0] -= 1

    return FunctionModel(stream_function=stream, model_name="gpt-4o")


def _limited(
    store: Store, model: FunctionModel, limits: dict[str, Any], *, max_tokens: int | None = None
) -> tuple[LLMAgent, Any]:
    llm = LLMAgent(model=model, label="openai:gpt-4o", max_tokens=max_tokens)
    shared = recording_shared(store)
    return llm, rate_limited(llm, llm=llm, limits=_specs(limits), store=store, shared=shared)


async def test_no_limit_for_the_model_means_no_wrapper_and_no_queries(store: Store) -> None:
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    records: list[dict[str, Any]] = []
    limits = {"anthropic": {"rpm": 1}, "openai:gpt-4o-mini": {"rpm": 1}, "openai": {}}
    llm, agent = _limited(store, _recording_model(records), limits)
    assert agent is llm
    event.listen(store.engine.sync_engine, "before_cursor_execute", count)
    try:
        for index in range(5):
            await agent.run(_request(index=index), _Quiet())
    finally:
        event.remove(store.engine.sync_engine, "before_cursor_execute", count)
    assert len(records) == 5
    assert statements == []


async def test_calls_in_one_process_keep_to_the_rate_and_record_their_wait(store: Store) -> None:
    records: list[dict[str, Any]] = []
    _, agent = _limited(store, _recording_model(records), {"openai": {"rpm": 600}})
    assert isinstance(agent, RateLimited)
    results = await asyncio.gather(*(agent.run(_request(index=i), _Quiet()) for i in range(25)))
    _check_rate(records, 0.1)
    waits = sorted(r.details.get("rate_limit_wait", 0.0) for r in results)
    assert waits[0] == 0.0  # the first call did not wait and says nothing
    assert sum(1 for r in results if "rate_limit_wait" not in r.details) <= 2
    assert waits[-1] >= 2.0  # the last one waited for 24 slots of 0.1 s
    assert all(r.output == "w" for r in results)


async def test_tpm_limits_token_throughput(store: Store) -> None:
    # Each call: 200 prompt chars (50 tokens) + max_tokens 100 = 150 charged, and the
    # FunctionModel reports 50 input + 100 output = 150 used: 0.2 s of a 45000 tpm limit.
    records: list[dict[str, Any]] = []
    model = _recording_model(records, words=100)
    _, agent = _limited(store, model, {"openai:gpt-4o": {"tpm": 45000}}, max_tokens=100)
    results = await asyncio.gather(
        *(agent.run(_request("p" * 200, index=i), _Quiet()) for i in range(12))
    )
    assert all(r.usage.input_tokens + r.usage.output_tokens == 150 for r in results)
    _check_rate(records, 0.2)


async def test_unused_tokens_are_given_back_after_the_call(store: Store) -> None:
    # 30 s of a 6000 tpm limit charged up front (3000 tokens); 51 used (0.51 s).
    records: list[dict[str, Any]] = []
    _, agent = _limited(
        store, _recording_model(records), {"openai": {"tpm": 6000}}, max_tokens=3000
    )
    before = time.time()
    await agent.run(_request(""), _Quiet())
    async with store.engine.connect() as conn:
        tat = (await conn.execute(sa.select(rate_limits.c.token_tat))).scalar_one()
    assert before + 0.51 <= tat < time.time() + 0.51 + 1.0


async def test_concurrency_cap_holds_in_one_process(store: Store) -> None:
    records: list[dict[str, Any]] = []
    in_flight = [0, 0]
    model = _recording_model(records, latency=0.05, in_flight=in_flight)
    _, agent = _limited(store, model, {"openai": {"concurrency": 3}})
    await asyncio.gather(*(agent.run(_request(index=i), _Quiet()) for i in range(15)))
    assert len(records) == 15
    assert in_flight[1] == 3
    assert await RateLimitStore(store.engine).leases_held("openai") == 0


async def test_a_failed_call_releases_its_lease(store: Store) -> None:
    async def broken(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
        raise RuntimeError("provider exploded")
        yield ""

    _, agent = _limited(
        store, FunctionModel(stream_function=broken), {"openai": {"concurrency": 1}}
    )
    for _ in range(2):
        with pytest.raises(RuntimeError, match="exploded"):
            await agent.run(_request(), _Quiet())
    assert await RateLimitStore(store.engine).leases_held("openai") == 0


async def test_cancelling_a_waiting_call_returns_at_once(store: Store) -> None:
    records: list[dict[str, Any]] = []
    _, agent = _limited(store, _recording_model(records), {"openai": {"rpm": 1, "concurrency": 1}})
    await agent.run(_request(), _Quiet())  # the next slot is a minute away
    waiting = asyncio.create_task(agent.run(_request(index=1), _Quiet()))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(waiting, timeout=5)  # its slot would be 60 s away
    assert len(records) == 1
    assert await RateLimitStore(store.engine).leases_held("openai") == 0


async def test_cancelling_a_call_waiting_for_a_lease_returns_at_once(store: Store) -> None:
    release = asyncio.Event()

    async def held(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
        await release.wait()
        yield "done"

    _, agent = _limited(store, FunctionModel(stream_function=held), {"openai": {"concurrency": 1}})
    first = asyncio.create_task(agent.run(_request(), _Quiet()))
    second = asyncio.create_task(agent.run(_request(index=1), _Quiet()))
    await asyncio.sleep(0.3)
    second.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(second, timeout=5)
    release.set()
    assert (await first).output == "done"
    assert await RateLimitStore(store.engine).leases_held("openai") == 0


# through the engine


async def test_a_step_that_waited_records_it_in_its_details(engine: Engine) -> None:
    name = f"rl-{uuid.uuid4().hex[:8]}"  # a key no other test uses on the shared database
    text = f"""
version: 1
limits:
  "openai:{name}": {{rpm: 300}}
agents:
  a: {{model: "openai:{name}"}}
workflows:
  w:
    steps:
      - {{id: each, agent: a, foreach: "{{{{ [1, 2, 3, 4] }}}}", prompt: "item {{{{ item }}}}"}}
"""
    records: list[dict[str, Any]] = []
    with override_models(lambda label: _recording_model(records)):
        run, events = await run_yaml(engine, text)
    assert run.status is RunStatus.SUCCEEDED
    finished = [e.data for e in events if e.kind == "step_finished"]
    waits = sorted(data.get("details", {}).get("rate_limit_wait", 0.0) for data in finished)
    assert len(waits) == 4
    assert waits[-1] >= 0.5  # the last of four waited for three slots of 0.2 s
    steps = await engine.store.steps(run.id)
    assert max((s.details or {}).get("rate_limit_wait", 0.0) for s in steps) == waits[-1]
    assert len(records) == 4


# worker processes sharing one database


def _spawn_workers(
    tmp_path: Path, url: str, limits: dict[str, Any], *, workers: int, **options: float
) -> list[dict[str, Any]]:
    outs = [tmp_path / f"worker-{n}.jsonl" for n in range(workers)]
    flags = [x for key, value in options.items() for x in (f"--{key}", str(value))]
    command = [sys.executable, "-m", "tests.fixtures.ratelimit_worker", "calls", url]
    procs = [
        subprocess.Popen([*command, json.dumps(limits), str(out), *flags], cwd=ROOT) for out in outs
    ]
    for proc in procs:
        assert proc.wait(timeout=120) == 0
    return [json.loads(line) for out in outs for line in out.read_text().splitlines()]


async def _migrated(url: str) -> None:
    store = await Store.open(url)
    await store.close()


@pytest.mark.postgres
async def test_four_worker_processes_share_one_request_rate(
    fresh_pg_url: str, tmp_path: Path
) -> None:
    await _migrated(fresh_pg_url)
    records = await asyncio.to_thread(
        _spawn_workers,
        tmp_path,
        fresh_pg_url,
        {"openai": {"rpm": 600}},
        workers=4,
        calls=12,
        concurrency=12,
    )
    assert len(records) == 48
    _check_rate(records, 0.1)


@pytest.mark.postgres
async def test_concurrency_cap_holds_across_worker_processes(
    fresh_pg_url: str, tmp_path: Path
) -> None:
    await _migrated(fresh_pg_url)
    records = await asyncio.to_thread(
        _spawn_workers,
        tmp_path,
        fresh_pg_url,
        {"openai:gpt-4o": {"concurrency": 3}},
        workers=4,
        calls=6,
        concurrency=6,
        latency=0.1,
    )
    assert len(records) == 24
    assert 2 <= _max_overlap(records) <= 3


def _max_overlap(records: list[dict[str, Any]]) -> int:
    edges = sorted([(r["start"], 1) for r in records] + [(r["end"], -1) for r in records])
    running = best = 0
    for _, step in edges:  # an end sorts before a start at the same instant
        running += step
        best = max(best, running)
    return best


async def test_a_crashed_workers_lease_expires(isolated_settings: Settings) -> None:
    url = isolated_settings.resolved_database_url
    await _migrated(url)
    holder = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "tests.fixtures.ratelimit_worker", "hold", url, "openai", "1.0"],
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        line = await asyncio.wait_for(holder.stdout.readline(), timeout=60)
        assert line.strip() == b"held"
        os.kill(holder.pid, signal.SIGKILL)  # a crash in the middle of its call
        await holder.wait()
    finally:
        if holder.returncode is None:
            holder.kill()
            await holder.wait()
    store = await Store.open(url)
    try:
        limiter = RateLimiter(RateLimitStore(store.engine))
        rule = [RateRule(key="openai", concurrency=1)]

        async def admitted() -> float | None:
            async with limiter.admit(rule, tokens=0) as admission:
                return admission.waited

        waited = await asyncio.wait_for(admitted(), timeout=30)
    finally:
        await store.close()
    assert waited is not None  # it had to wait for the dead worker's lease to expire


async def test_many_calls_in_one_process_on_sqlite_keep_to_the_limits(
    sqlite_settings: Settings,
) -> None:
    url = sqlite_settings.resolved_database_url
    records = await make_calls(
        url, {"openai": {"rpm": 1200, "concurrency": 4}}, calls=40, concurrency=40, latency=0.02
    )
    _check_rate(records, 0.05)
    assert _max_overlap(records) <= 4
