"""Response cache: an agent's answer to the very same request, reused for a while.

Exact match only. The key is the SHA-256 of canonical JSON of the tenant, the model's
identity (model label, instructions, settings, output schema: `LLMAgent.identity()`) and
the prompt, so a different tenant, model, instruction, setting or prompt never matches.
Entries live in the database (`store/cache.py`), signed with HMAC-SHA256 under
AGENTMILL_CACHE_SECRET over tenant, key, model, expiry and value: a row edited in the
database (value, expiry, or moved to another tenant) fails the check, is deleted and
counted, and the call goes to the model. There is no default secret.

Each process keeps the entries it verified recently in memory (bounded) and reads them
from the database again after `memory_trust` seconds, so a hit usually costs a dict lookup,
and a `cache clear` or a tampered row is noticed by running processes within seconds.
See docs/cache.md.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agentmill.agents.base import Agent, StepContext, StepRequest, StepResult, Usage
from agentmill.errors import UserError
from agentmill.spec.models import CacheSpec
from agentmill.store.cache import CacheBackend, CacheCounts, CacheRow

if TYPE_CHECKING:
    from agentmill.engine.plan import RunPlan
    from agentmill.policy.chain import PolicyServices
    from agentmill.settings import Settings

__all__ = [
    "CacheHit",
    "CacheSecretMissing",
    "CachedAgent",
    "ResponseCache",
    "cache_key",
    "cached",
    "check_cache_secret",
    "close_response_cache",
    "response_cache",
]

logger = logging.getLogger("agentmill.cache")

GENERATE_SECRET = "python -c 'import secrets; print(secrets.token_hex(32))'"  # noqa: S105
MIN_SECRET_CHARS = 16
_KEY_VERSION = 1
_SHARED_NAME = "response_cache"
_MEMORY_MAX_BYTES = 16 * 1024 * 1024
_REPLAY_CHUNK = 256
_create_lock = threading.Lock()


class CacheSecretMissing(UserError):
    """An agent caches responses but no (usable) AGENTMILL_CACHE_SECRET is set."""


def check_cache_secret(plan: RunPlan, settings: Settings) -> None:
    """Raise a UserError saying how to set the secret if an agent of `plan` caches
    responses and no cache secret is configured."""
    agents = sorted(name for name, spec in plan.agents.items() if spec.cache is not None)
    if agents:
        _secret(settings, what=f"agent {', '.join(repr(a) for a in agents)} sets `cache`")


def _secret(settings: Settings, *, what: str) -> bytes:
    value = settings.cache_secret.get_secret_value() if settings.cache_secret else ""
    if not value:
        raise CacheSecretMissing(
            f"{what} but AGENTMILL_CACHE_SECRET is not set: cache entries are signed with"
            f" it and there is no default. Generate one with `{GENERATE_SECRET}` and set"
            " AGENTMILL_CACHE_SECRET to it (the same value for every process sharing the"
            " database), or remove `cache` from the agent"
        )
    if len(value) < MIN_SECRET_CHARS:
        raise CacheSecretMissing(
            f"{what} but AGENTMILL_CACHE_SECRET is shorter than {MIN_SECRET_CHARS}"
            f" characters: generate a strong one with `{GENERATE_SECRET}`"
        )
    return value.encode()


def cache_key(tenant: str, identity: dict[str, Any], prompt: str) -> str:
    """SHA-256 (hex) of canonical JSON of everything that decides a response."""
    canonical = json.dumps(
        {"v": _KEY_VERSION, "tenant": tenant, "identity": identity, "prompt": prompt},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def sign(secret: bytes, *, tenant: str, key: str, model: str, expires_at: float, value: str) -> str:
    """HMAC-SHA256 (hex) over everything a lookup trusts in a row."""
    message = json.dumps(
        [_KEY_VERSION, tenant, key, model, expires_at, value],
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hmac.new(secret, message.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True, kw_only=True)
class CacheHit:
    """A verified entry: the output (a fresh copy) and the model that produced it."""

    output: Any
    model: str


@dataclass(frozen=True, kw_only=True)
class _Verified:
    value: str
    model: str
    expires_at: float
    verified_at: float
    size: int


class _Memory:
    """Recently verified entries of this process, least recently used dropped first."""

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._bytes = 0
        self._entries: OrderedDict[tuple[str, str], _Verified] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, tenant: str, key: str) -> _Verified | None:
        with self._lock:
            found = self._entries.get((tenant, key))
            if found is not None:
                self._entries.move_to_end((tenant, key))
            return found

    def put(self, tenant: str, key: str, entry: _Verified) -> None:
        if entry.size > self._max_bytes:
            return
        with self._lock:
            old = self._entries.pop((tenant, key), None)
            self._bytes += entry.size - (old.size if old else 0)
            self._entries[(tenant, key)] = entry
            while self._bytes > self._max_bytes:
                _, dropped = self._entries.popitem(last=False)
                self._bytes -= dropped.size

    def drop(self, keys: list[tuple[str, str]]) -> None:
        with self._lock:
            for key in keys:
                old = self._entries.pop(key, None)
                if old is not None:
                    self._bytes -= old.size

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0


class ResponseCache:
    """The process-wide cache: verified lookups, signed writes, per-tenant counters.
    Safe to share by tasks of any event loop and by threads."""

    def __init__(
        self,
        backend: CacheBackend,
        *,
        secret: bytes,
        memory_bytes: int = _MEMORY_MAX_BYTES,
        memory_trust: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.backend = backend
        self._secret = secret
        self._memory = _Memory(memory_bytes)
        self._memory_trust = memory_trust
        self._clock = clock
        backend.on_removed = self._memory.drop

    @classmethod
    def open(
        cls,
        settings: Settings,
        *,
        flush_interval: float = 1.0,
        memory_trust: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> ResponseCache:
        """A cache on the settings' database (connections are made on first use)."""
        secret = _secret(settings, what="the response cache is used")
        backend = CacheBackend(
            settings.resolved_database_url,
            max_bytes=settings.cache_max_bytes,
            flush_interval=flush_interval,
            clock=clock,
        )
        memory = min(_MEMORY_MAX_BYTES, settings.cache_max_bytes)
        return cls(
            backend, secret=secret, memory_bytes=memory, memory_trust=memory_trust, clock=clock
        )

    async def get(self, tenant: str, key: str) -> CacheHit | None:
        """The entry for `key` if it exists, is intact and has not expired. Never raises
        for a database failure: that is logged and counted as a miss."""
        now = self._clock()
        remembered = self._memory.get(tenant, key)
        if (
            remembered is not None
            and now < remembered.expires_at
            and now - remembered.verified_at < self._memory_trust
        ):
            return self._hit(tenant, key, remembered, now)
        try:
            row = await self.backend.get(tenant, key)
        except Exception as exc:  # noqa: BLE001 - a cache failure must not fail the step
            logger.warning("response cache read failed, calling the model: %s", exc)
            self.backend.count(tenant, misses=1)
            return None
        return self._check(tenant, key, row, now)

    def _check(self, tenant: str, key: str, row: CacheRow | None, now: float) -> CacheHit | None:
        if row is None:
            self._memory.drop([(tenant, key)])
            self.backend.count(tenant, misses=1)
            return None
        expected = sign(
            self._secret,
            tenant=row.tenant,
            key=row.key,
            model=row.model,
            expires_at=row.expires_at,
            value=row.value,
        )
        if row.tenant != tenant or not hmac.compare_digest(expected, row.signature):
            logger.warning(
                "response cache entry %s of tenant %r failed its integrity check (edited in"
                " the database, or signed with another secret): discarded",
                key[:12],
                tenant,
            )
            self._forget(row, misses=1, integrity_failures=1)
            return None
        if now >= row.expires_at:
            self._forget(row, misses=1, expirations=1)
            return None
        entry = _Verified(
            value=row.value,
            model=row.model,
            expires_at=row.expires_at,
            verified_at=now,
            size=row.size,
        )
        self._memory.put(tenant, key, entry)
        return self._hit(tenant, key, entry, now)

    def _forget(self, row: CacheRow, **counts: int) -> None:
        self._memory.drop([(row.tenant, row.key)])
        self.backend.discard(row)
        self.backend.count(row.tenant, **counts)

    def _hit(self, tenant: str, key: str, entry: _Verified, now: float) -> CacheHit:
        self.backend.touch(tenant, key, now)
        self.backend.count(tenant, hits=1)
        return CacheHit(output=json.loads(entry.value), model=entry.model)

    async def put(self, tenant: str, key: str, *, model: str, output: Any, ttl: float) -> bool:
        """Store a response and wait until it is written; False if it was not stored
        (not JSON, larger than the whole cache, or the database failed: logged)."""
        try:
            value = json.dumps(output, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError):
            logger.info("response of %s not cached: not a JSON value", model)
            return False
        now = self._clock()
        expires_at = now + ttl
        size = len(value.encode()) + len(tenant) + len(key) + len(model) + 64
        if size > self.backend.max_bytes:
            logger.info("response of %s not cached: %d bytes exceed the cache size", model, size)
            return False
        signature = sign(
            self._secret, tenant=tenant, key=key, model=model, expires_at=expires_at, value=value
        )
        row = CacheRow(
            tenant=tenant,
            key=key,
            model=model,
            value=value,
            signature=signature,
            size=size,
            created_at=now,
            expires_at=expires_at,
            last_used_at=now,
        )
        entry = _Verified(
            value=value, model=model, expires_at=expires_at, verified_at=now, size=size
        )
        self._memory.put(tenant, key, entry)
        self.backend.put(row)
        try:
            await self.backend.commit()
        except Exception as exc:  # noqa: BLE001 - a cache failure must not fail the step
            logger.warning("response cache write failed (queued again): %s", exc)
            return False
        return True

    def forget_memory(self) -> None:
        """Drop this process's verified copies: the next lookups read the database."""
        self._memory.clear()

    def unwritten(self) -> dict[str, CacheCounts]:
        """Counters of this process not yet in the database (written every second)."""
        return self.backend.pending()

    async def flush(self) -> None:
        """Write every counter and entry recorded so far."""
        await self.backend.commit()

    async def aclose(self) -> None:
        await self.backend.aclose()


class CachedAgent(Agent):
    """Answers from the cache when it can; otherwise calls the agent and keeps a
    successful answer of its own model (not a fallback's) for `ttl` seconds."""

    def __init__(
        self,
        inner: Agent,
        *,
        cache: ResponseCache,
        tenant: str,
        identity: dict[str, Any],
        ttl: float,
    ) -> None:
        self._inner = inner
        self._cache = cache
        self._tenant = tenant
        self._identity = identity
        self._model = str(identity.get("model", ""))
        self._ttl = ttl

    async def run(self, request: StepRequest, context: StepContext) -> StepResult:
        key = cache_key(self._tenant, self._identity, request.prompt)
        hit = await self._cache.get(self._tenant, key)
        if hit is not None:
            if isinstance(hit.output, str):
                for start in range(0, len(hit.output), _REPLAY_CHUNK):
                    await context.emit_text(hit.output[start : start + _REPLAY_CHUNK])
            return StepResult(
                output=hit.output,
                model=hit.model,
                usage=Usage(),
                cost_usd=0.0,
                details={"cached": True, "cache_key": key[:12]},
            )
        result = await self._inner.run(request, context)
        if result.model == self._model:
            await self._cache.put(
                self._tenant, key, model=result.model, output=result.output, ttl=self._ttl
            )
        return result


def response_cache(services: PolicyServices) -> ResponseCache:
    """The process's response cache, created on first use from the services' settings."""
    found = services.shared.get(_SHARED_NAME)
    if found is None:
        with _create_lock:
            found = services.shared.get(_SHARED_NAME)
            if found is None:
                found = services.shared[_SHARED_NAME] = ResponseCache.open(services.settings)
    assert isinstance(found, ResponseCache)
    return found


async def close_response_cache(services: PolicyServices) -> None:
    """Write the cache's last counters and close it (call when the engine stops)."""
    found = services.shared.pop(_SHARED_NAME, None)
    if isinstance(found, ResponseCache):
        await found.aclose()


def cached(
    inner: Agent,
    *,
    services: PolicyServices,
    tenant: str,
    spec: CacheSpec,
    identity: dict[str, Any],
) -> Agent:
    """`inner` behind the process's response cache, for `tenant`, keeping answers `spec.ttl`."""
    return CachedAgent(
        inner, cache=response_cache(services), tenant=tenant, identity=identity, ttl=spec.ttl
    )
