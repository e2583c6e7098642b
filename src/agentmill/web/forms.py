"""What the dashboard's forms share: reading typed JSON."""

from __future__ import annotations

import json
from typing import Any

from agentmill.errors import InputError

__all__ = ["edited_arguments"]


def edited_arguments(text: str) -> dict[str, Any] | None:
    """Edited tool-call arguments typed in a form: None when left empty, else a JSON object;
    anything else an InputError naming the problem."""
    if not text.strip():
        return None
    try:
        value: Any = json.loads(text)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
        raise InputError(f"the edited arguments are not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InputError("the edited arguments must be a JSON object")
    return value  # pyright: ignore[reportUnknownVariableType]
