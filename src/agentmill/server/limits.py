"""Request limits: body size (checked before buffering) and a per-key rate limit."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agentmill.server.problems import ApiProblem, problem_response

__all__ = ["BodySizeLimit", "RateLimiter", "StreamSlots"]


class BodySizeLimit:
    """Refuse request bodies over a limit with 413, from Content-Length before reading,
    or as soon as a streamed body passes the limit. Paths under a prefix may get their own."""

    def __init__(self, app: ASGIApp, *, default: int, per_prefix: dict[str, int]) -> None:
        self.app = app
        self.default = default
        self.per_prefix = per_prefix

    def _limit(self, path: str) -> int:
        for prefix, limit in self.per_prefix.items():
            if path.startswith(prefix):
                return limit
        return self.default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self._limit(scope["path"])
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            response = problem_response(413, "too-large", _too_large(limit), instance=scope["path"])
            await response(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    # An HTTPException, so FastAPI's body parsing passes it on as a 413
                    # (it turns any other exception into a 400).
                    raise HTTPException(413, _too_large(limit))
            return message

        await self.app(scope, limited, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _too_large(limit: int) -> str:
    return f"the request body is over the limit of {limit} bytes"


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """A token bucket per API key: `rate` requests per second, bursts up to `burst`."""

    def __init__(self, *, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, _Bucket] = {}

    def check(self, key_id: str) -> None:
        """Take one token, or raise 429 with the seconds until one is available."""
        now = time.monotonic()
        bucket = self._buckets.setdefault(key_id, _Bucket(float(self.burst), now))
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return
        wait = math.ceil((1 - bucket.tokens) / self.rate)
        raise ApiProblem(
            429,
            "rate-limited",
            f"too many requests for this API key; retry in {wait} s",
            headers={"Retry-After": str(wait)},
        )


class StreamSlots:
    """At most `limit` open event streams per API key (in this process)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[str, int] = {}

    def acquire(self, key_id: str) -> None:
        if self._open.get(key_id, 0) >= self.limit:
            raise ApiProblem(
                429,
                "too-many-streams",
                f"this API key has {self.limit} event streams open, the most allowed; "
                "close one first",
                headers={"Retry-After": "1"},
            )
        self._open[key_id] = self._open.get(key_id, 0) + 1

    def release(self, key_id: str) -> None:
        count = self._open.get(key_id, 0) - 1
        if count > 0:
            self._open[key_id] = count
        else:
            self._open.pop(key_id, None)
