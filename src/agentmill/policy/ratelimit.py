"""Shared rate limits: requests and tokens per minute and a concurrency cap per provider
or model, kept in the database so every worker using it counts against the same limit.

A call of model `provider:name` is subject to the limits configured under `provider`
and under `provider:name`; a model served from its own `base_url` (label
`provider:name@url`) only to those under its exact label. The call first takes a lease
under each concurrency cap (waiting while the caps are full), then a start slot under
every rpm / tpm limit (GCRA, see `store/ratelimits.py`), sleeps until the slot and runs.
After the call, the tokens it was charged up front (an estimate) are corrected with the
usage the model reported. See docs/rate-limits.md for the guarantees.

Within one process, one task per set of keys talks to the database at a time; the others
wait in line on an asyncio lock, so waiting costs the database one query per slot or
per poll, not one per waiting call. Waiting is plain `asyncio` sleeping: a cancelled run
stops waiting at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
import uuid
from collections.abc import AsyncGenerator, Coroutine, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from agentmill.agents.base import Agent, StepContext, StepRequest, StepResult, Usage
from agentmill.spec.models import RateLimitSpec
from agentmill.store.ratelimits import RateLimitStore, RateRule

if TYPE_CHECKING:
    from agentmill.agents.llm import LLMAgent
    from agentmill.store import Store

__all__ = [
    "CHARS_PER_TOKEN",
    "DEFAULT_OUTPUT_TOKENS",
    "SHARED_KEY",
    "Admission",
    "RateLimited",
    "RateLimiter",
    "estimate_tokens",
    "limit_rules",
    "rate_limited",
]

logger = logging.getLogger("agentmill.policy")

CHARS_PER_TOKEN = 4
"""Characters per token when estimating a prompt's tokens before the call."""
DEFAULT_OUTPUT_TOKENS = 1024
"""Output tokens charged up front for an agent without `max_tokens`."""
SHARED_KEY = "ratelimit.limiter"
"""Where `rate_limited` keeps the process's limiter in the policies' shared dict."""


def limit_rules(label: str, limits: dict[str, RateLimitSpec]) -> list[RateRule]:
    """The configured limits a call of model `label` is subject to, as intervals."""
    rules: list[RateRule] = []
    for key in _keys(label):
        spec = limits.get(key)
        if spec is None or (spec.rpm is None and spec.tpm is None and spec.concurrency is None):
            continue
        rules.append(
            RateRule(
                key=key,
                request_interval=60.0 / spec.rpm if spec.rpm else 0.0,
                token_interval=60.0 / spec.tpm if spec.tpm else 0.0,
                concurrency=spec.concurrency,
            )
        )
    return rules


def _keys(label: str) -> list[str]:
    if "@" in label:
        return [label]  # its own server: not the provider's limits
    provider = label.split(":", 1)[0]
    return [provider] if provider == label else [provider, label]


def estimate_tokens(prompt: str, instructions: str, max_tokens: int | None) -> int:
    """Tokens charged before the call: the input by its length, plus the most it may
    write (`max_tokens`, else `DEFAULT_OUTPUT_TOKENS`)."""
    input_tokens = math.ceil((len(prompt) + len(instructions)) / CHARS_PER_TOKEN)
    return input_tokens + (DEFAULT_OUTPUT_TOKENS if max_tokens is None else max_tokens)


@dataclass(kw_only=True)
class Admission:
    """A call let through the limits."""

    waited: float | None = None
    """Seconds spent waiting for a lease or a slot; None when the call did not wait."""
    charged: int = 0
    """Tokens charged up front."""
    actual: int | None = None
    """Tokens the call used, when known: the difference to `charged` is settled after."""


@dataclass
class _Gate:
    """One line of waiting tasks per set of keys in this process."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    freed: asyncio.Event = field(default_factory=asyncio.Event)


class RateLimiter:
    """Lets calls through shared limits; one per process and database."""

    def __init__(
        self,
        store: RateLimitStore,
        *,
        lookahead: float = 1.0,
        lease_ttl: float = 30.0,
        poll_interval: float = 0.05,
    ) -> None:
        self._store = store
        self._lookahead = lookahead
        """A slot is taken at most this many seconds ahead: a cancelled call wastes no
        more of the limit than that."""
        self._lease_ttl = lease_ttl
        self._poll_interval = poll_interval
        self._gates: dict[tuple[str, ...], _Gate] = {}
        self._settling: set[asyncio.Task[None]] = set()

    @contextlib.asynccontextmanager
    async def admit(self, rules: Sequence[RateRule], *, tokens: int) -> AsyncGenerator[Admission]:
        """Wait for a place under every concurrency cap and a start slot under every rate;
        hold the places for the block. Set `actual` on the admission to settle tokens."""
        began = time.monotonic()
        caps = [(rule.key, rule.concurrency) for rule in rules if rule.concurrency]
        rated = [rule for rule in rules if rule.request_interval or rule.token_interval]
        leases = [uuid.uuid4().hex for _ in caps]
        admission = Admission(charged=tokens if any(r.token_interval for r in rated) else 0)
        waited = False
        renewal: asyncio.Task[None] | None = None
        try:
            if caps:
                waited = await self._lease(caps, leases)
                renewal = asyncio.create_task(self._renew(leases))
            if rated:
                waited = await self._slot(rated, tokens) or waited
            if waited:
                admission.waited = time.monotonic() - began
            yield admission
        finally:
            if renewal is not None:
                renewal.cancel()
            # leases go even if taking them was interrupted (deleting none is harmless)
            await self._shielded(self._settle(rated, admission, leases))

    async def _lease(self, caps: list[tuple[str, int]], leases: list[str]) -> bool:
        """Take a lease under each cap, waiting while any is full; whether it waited."""
        gate = self._gate(("lease", *(key for key, _ in caps)))
        waited = False
        async with gate.lock:
            while True:
                gate.freed.clear()
                if await self._store.acquire_leases(caps, leases, ttl=self._lease_ttl):
                    return waited
                waited = True
                # a lease freed in this process wakes us at once; other workers' by polling
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._poll_interval):
                        await gate.freed.wait()

    async def _slot(self, rules: list[RateRule], tokens: int) -> bool:
        """Reserve a start slot and sleep until it; whether it waited."""
        gate = self._gate(("rate", *(rule.key for rule in rules)))
        waited = False
        async with gate.lock:
            while True:
                slot = await self._store.reserve(rules, tokens=tokens, lookahead=self._lookahead)
                if slot.reserved:
                    break
                waited = True
                # come back when the slot is within reach; the jitter spreads the workers
                jitter = random.uniform(0, self._lookahead / 4)  # noqa: S311 - not security
                await asyncio.sleep(slot.start - slot.now - self._lookahead + jitter)
        delay = slot.start - time.time()  # the store's clock (see store/ratelimits.py)
        if delay > 0:
            await asyncio.sleep(delay)
            return True
        return waited

    async def _renew(self, leases: list[str]) -> None:
        while True:
            await asyncio.sleep(self._lease_ttl / 3)
            try:
                await self._store.renew_leases(leases, ttl=self._lease_ttl)
            except Exception:  # the next renewal tries again; expiry is the bound
                logger.warning("could not renew rate limit leases", exc_info=True)

    async def _settle(self, rules: list[RateRule], admission: Admission, leases: list[str]) -> None:
        correction = 0
        if admission.charged and admission.actual is not None:
            correction = admission.actual - admission.charged
        await self._store.settle(leases=leases, rules=rules, tokens=correction)
        if leases:
            for key, gate in self._gates.items():
                if key[0] == "lease":
                    gate.freed.set()

    async def _shielded(self, work: Coroutine[Any, Any, None]) -> None:
        """Finish `work` even if the caller is cancelled meanwhile (leases must go)."""
        task = asyncio.ensure_future(work)
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)
        await asyncio.shield(task)

    def _gate(self, key: tuple[str, ...]) -> _Gate:
        gate = self._gates.get(key)
        if gate is None:
            gate = self._gates[key] = _Gate()
        return gate


class RateLimited(Agent):
    """An LLM agent whose calls wait for their turn under the shared limits."""

    def __init__(
        self,
        inner: Agent,
        *,
        limiter: RateLimiter,
        rules: list[RateRule],
        instructions: str,
        max_tokens: int | None,
    ) -> None:
        self._inner = inner
        self._limiter = limiter
        self._rules = rules
        self._instructions = instructions
        self._max_tokens = max_tokens
        self._count_tokens = any(rule.token_interval for rule in rules)

    async def run(self, request: StepRequest, context: StepContext) -> StepResult:
        tokens = (
            estimate_tokens(request.prompt, self._instructions, self._max_tokens)
            if self._count_tokens
            else 0
        )
        async with self._limiter.admit(self._rules, tokens=tokens) as admission:
            result = await self._inner.run(request, context)
            admission.actual = _used(result.usage)
        if admission.waited is None or round(admission.waited, 3) == 0:
            return result
        details = {**result.details, "rate_limit_wait": round(admission.waited, 3)}
        return replace(result, details=details)


def _used(usage: Usage) -> int | None:
    """Tokens a call used, or None when the model reported none (keep the estimate)."""
    total = usage.input_tokens + usage.output_tokens
    return total or None


def rate_limited(
    inner: Agent,
    *,
    llm: LLMAgent,
    limits: dict[str, RateLimitSpec],
    store: Store,
    shared: dict[str, Any] | None = None,
) -> Agent:
    """`inner` behind the limits configured for `llm`'s model; `inner` itself when none
    apply (no cost, no database traffic). `shared` holds the process's limiter."""
    rules = limit_rules(llm.label, limits)
    if not rules:
        return inner
    limiter = shared.get(SHARED_KEY) if shared is not None else None
    if not isinstance(limiter, RateLimiter):
        limiter = RateLimiter(RateLimitStore(store.engine))
        if shared is not None:
            shared[SHARED_KEY] = limiter
    return RateLimited(
        inner,
        limiter=limiter,
        rules=rules,
        instructions=llm.instructions,
        max_tokens=llm.max_tokens,
    )
