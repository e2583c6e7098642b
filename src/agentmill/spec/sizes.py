"""Sizes in config files: `64KB`, `1MB`, `2GiB`, or a number of bytes."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator

__all__ = ["Size", "parse_size"]

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(value: Any) -> int:
    """Bytes in a size; raises ValueError with the accepted forms."""
    if isinstance(value, bool):
        raise ValueError(_bad(value))
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (match := _PATTERN.match(value)):
        unit = match.group(2).lower()
        if unit not in _UNITS:
            raise ValueError(_bad(value))
        size = int(float(match.group(1)) * _UNITS[unit])
    else:
        raise ValueError(_bad(value))
    if size <= 0:
        raise ValueError(f"size must be positive, got {value!r}")
    return size


def _bad(value: Any) -> str:
    return f"invalid size {value!r}: use a number of bytes or forms like 64KB, 1MB, 2GiB"


Size = Annotated[int, BeforeValidator(parse_size)]
"""A size in bytes, written in config as `64KB`, `1MB`, `2GiB`, ... or a plain number."""
