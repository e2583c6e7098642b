"""Durations in config files: `500ms`, `30s`, `20m`, `1h`, `3d`, or a number of seconds."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator

__all__ = ["Duration", "parse_duration"]

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")


def parse_duration(value: Any) -> float:
    """Seconds in a duration; raises ValueError with the accepted forms."""
    if isinstance(value, bool):
        raise ValueError(_bad(value))
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _PATTERN.match(value)):
        seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    else:
        raise ValueError(_bad(value))
    if seconds <= 0:
        raise ValueError(f"duration must be positive, got {value!r}")
    return seconds


def _bad(value: Any) -> str:
    return (
        f"invalid duration {value!r}: use a number of seconds or forms like 500ms, 30s, 20m, 1h, 3d"
    )


Duration = Annotated[float, BeforeValidator(parse_duration)]
"""A duration in seconds, written in config as `30s`, `20m`, ... or a plain number."""
