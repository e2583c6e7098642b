"""Mapping pydantic-ai and provider exceptions to agentmill's errors, once, at the boundary.

A failure is **transient** (worth another attempt, counted by the circuit breaker) when the
provider is overloaded or unreachable: HTTP 408, 409, 425, 429 and 5xx, a lost connection,
a timeout, a malformed answer. Any other 4xx (400, 401, 403, 404, 422 ...), an exhausted
quota, the provider's content filter and an answer cut at `max_tokens` are not: the same
request would fail the same way. The provider's Retry-After (or
`retry-after-ms`) is kept so the retry waits as long as the provider asked.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from contextlib import contextmanager
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

from agentmill.errors import ProviderError

if TYPE_CHECKING:
    from pydantic_ai.exceptions import ModelAPIError, ModelHTTPError

__all__ = ["map_provider_errors", "retry_after_of"]

_TRANSIENT_STATUS = frozenset({408, 409, 425, 429})
_HINTS = {
    401: "check the model's API key",
    403: "check the model's API key and its access to the model",
    404: "check the model name and base_url",
}
_MAX_DETAIL_CHARS = 200


@contextmanager
def map_provider_errors(model_label: str) -> Generator[None]:
    """Turn provider failures into `ProviderError` (transient or not) naming the model."""
    from pydantic_ai.exceptions import (
        ContentFilterError,
        ModelAPIError,
        ModelConnectionError,
        ModelHTTPError,
        OutputTokenLimitExceeded,
        UnexpectedModelBehavior,
    )

    try:
        yield
    except ModelHTTPError as exc:
        raise _http_error(model_label, exc) from exc
    except ModelConnectionError as exc:
        raise ProviderError(
            f"model {model_label} could not be reached: {type(exc).__name__}", transient=True
        ) from exc
    except ModelAPIError as exc:
        raise ProviderError(
            f"model {model_label} failed: {exc}",
            transient=_transient_category(exc),
            retry_after=retry_after_of(exc),
        ) from exc
    except (ContentFilterError, OutputTokenLimitExceeded) as exc:
        # The provider's content filter, or an answer cut at max_tokens: the same request
        # would end the same way.
        raise ProviderError(
            f"model {model_label} could not answer: {exc.message}", transient=False
        ) from exc
    except UnexpectedModelBehavior as exc:
        raise ProviderError(
            f"model {model_label} behaved unexpectedly: {exc.message}", transient=True
        ) from exc


def _http_error(model_label: str, exc: ModelHTTPError) -> ProviderError:
    from pydantic_ai.exceptions import ModelQuotaExceededError

    status = exc.status_code
    transient = (status in _TRANSIENT_STATUS or status >= 500) and not isinstance(
        exc, ModelQuotaExceededError
    )
    message = f"model {model_label} answered HTTP {status}"
    if not transient:
        detail = _HINTS.get(status) or _provider_message(exc.body)
        if detail:
            message = f"{message}: {detail}"
    return ProviderError(message, transient=transient, retry_after=retry_after_of(exc))


def _transient_category(exc: ModelAPIError) -> bool:
    """A provider error without an HTTP status, by the category pydantic-ai gave it."""
    from pydantic_ai.exceptions import (
        ModelRateLimitError,
        ModelRequestTimeout,
        ModelServerError,
        ModelUnavailableError,
    )

    return isinstance(
        exc, ModelRateLimitError | ModelServerError | ModelUnavailableError | ModelRequestTimeout
    )


def retry_after_of(exc: BaseException) -> float | None:
    """Seconds the provider asked to wait, from pydantic-ai's error or, failing that, the
    response headers of the provider SDK's exception it was raised from (`__cause__`)."""
    seen: set[int] = set()
    error: BaseException | None = exc
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        value = getattr(error, "retry_after", None)
        if isinstance(value, int | float) and value >= 0:
            return float(value)
        headers = getattr(error, "headers", None)
        if headers is None:
            headers = getattr(getattr(error, "response", None), "headers", None)
        if isinstance(headers, Mapping):
            found = _parse_headers(headers)  # pyright: ignore[reportUnknownArgumentType]
            if found is not None:
                return found
        error = error.__cause__
    return None


def _parse_headers(headers: Mapping[Any, Any]) -> float | None:
    """`retry-after-ms` (milliseconds, as OpenAI and Anthropic send it), then `Retry-After`
    (seconds or an HTTP date)."""
    lowered = {str(k).lower(): str(v) for k, v in headers.items()}
    if (raw_ms := lowered.get("retry-after-ms")) is not None:
        try:
            milliseconds = float(raw_ms)
        except ValueError:
            milliseconds = -1.0
        if 0 <= milliseconds < float("inf"):
            return milliseconds / 1000
    raw = lowered.get("retry-after")
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        return _seconds_until(raw)
    return seconds if 0 <= seconds < float("inf") else None


def _seconds_until(http_date: str) -> float | None:
    from datetime import UTC, datetime

    try:
        when = parsedate_to_datetime(http_date)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - datetime.now(UTC)).total_seconds(), 0.0)


def _provider_message(body: object) -> str | None:
    """The provider's own explanation of a rejected request, shortened."""
    message: object = body
    if isinstance(message, dict):
        inner: Any = message.get("error", message)
        if isinstance(inner, dict):
            inner = inner.get("message")  # pyright: ignore[reportUnknownMemberType]
        message = inner
    if not isinstance(message, str) or not message.strip():
        return None
    text = " ".join(message.split())
    return text if len(text) <= _MAX_DETAIL_CHARS else text[: _MAX_DETAIL_CHARS - 1] + "…"
