"""Mapping pydantic-ai and provider exceptions to agentmill's errors, once, at the boundary."""

from __future__ import annotations

from collections.abc import Generator
from contextlib import contextmanager

from agentmill.errors import ProviderError

__all__ = ["map_provider_errors"]

_TRANSIENT_STATUS = {408, 409, 425, 429, 500, 502, 503, 504, 529}


@contextmanager
def map_provider_errors(model_label: str) -> Generator[None]:
    """Turn provider failures into `ProviderError` (transient or not) naming the model."""
    from pydantic_ai.exceptions import (
        ModelAPIError,
        ModelConnectionError,
        ModelHTTPError,
        UnexpectedModelBehavior,
    )

    try:
        yield
    except ModelHTTPError as exc:
        transient = exc.status_code in _TRANSIENT_STATUS
        raise ProviderError(
            f"model {model_label} answered HTTP {exc.status_code}", transient=transient
        ) from exc
    except ModelConnectionError as exc:
        raise ProviderError(
            f"model {model_label} could not be reached: {type(exc).__name__}", transient=True
        ) from exc
    except ModelAPIError as exc:
        raise ProviderError(f"model {model_label} failed: {exc}", transient=False) from exc
    except UnexpectedModelBehavior as exc:
        raise ProviderError(
            f"model {model_label} behaved unexpectedly: {exc.message}", transient=True
        ) from exc
