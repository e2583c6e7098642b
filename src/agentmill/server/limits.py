"""Request limits: body size (checked before buffering), JSON nesting depth, a per-key rate
limit and a per-key stream cap."""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from itertools import accumulate

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agentmill.server.problems import ApiProblem, problem_response

__all__ = [
    "MAX_JSON_DEPTH",
    "BodySizeLimit",
    "JsonDepthLimit",
    "RateLimiter",
    "StreamSlots",
    "is_json_media_type",
    "refuse_deep_json",
]

MAX_JSON_DEPTH = 128
"""How deep arrays and objects may nest in a JSON body. Room for a run's inputs nested the
most they may (`spec.inputs.MAX_INPUT_DEPTH`, 100) inside a request; far past any GitHub
payload (about 10 levels), far below where parsing and everything that walks the value
recursively (validation, templates, serialisation) would exhaust Python's stack."""


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


class JsonDepthLimit:
    """Refuse JSON request bodies nested deeper than `max_depth` with 400, once the whole body
    is in and before anything parses it: one check for every route that reads JSON.

    Paths under `exempt` parse their bodies themselves and call `refuse_deep_json` there
    (the GitHub webhook does so after the signature, so an unsigned body costs no scan).
    """

    def __init__(
        self, app: ASGIApp, *, max_depth: int = MAX_JSON_DEPTH, exempt: tuple[str, ...] = ()
    ) -> None:
        self.app = app
        self.max_depth = max_depth
        self.exempt = exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["path"].startswith(self.exempt)
            or not is_json_media_type(_header(scope, b"content-type"))
        ):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []

        async def checked() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    refuse_deep_json(b"".join(chunks), self.max_depth)
            return message

        await self.app(scope, checked, send)


def is_json_media_type(content_type: str | None) -> bool:
    """`application/json` or `application/<anything>+json`, the bodies FastAPI parses."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


# A string, or what is left of an unterminated one: so the scan stays linear on any input.
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*+(?:"|\\?\Z)', re.DOTALL)
_NOT_BRACKETS = bytes(set(range(256)) - set(b"[]{}"))
_NESTING_STEP = [0] * 256
for _opening in b"[{":
    _NESTING_STEP[_opening] = 1
for _closing in b"]}":
    _NESTING_STEP[_closing] = -1


def refuse_deep_json(body: bytes, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Raise a 400 problem if the JSON text `body` nests arrays/objects past `max_depth`.

    Brackets inside strings do not count. Invalid JSON is left to the parser to report.
    """
    if body.count(b"[") + body.count(b"{") <= max_depth:
        return
    brackets = _JSON_STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    depth = max(accumulate(map(_NESTING_STEP.__getitem__, brackets)), default=0)
    if depth > max_depth:
        raise ApiProblem(
            400,
            "too-deep",
            f"the JSON body is nested more than {max_depth} levels deep; send a flatter document",
        )


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


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

    def held(self, key_id: str) -> int:
        """How many streams `key_id` has open now."""
        return self._open.get(key_id, 0)

    def release(self, key_id: str) -> None:
        count = self._open.get(key_id, 0) - 1
        if count > 0:
            self._open[key_id] = count
        else:
            self._open.pop(key_id, None)
