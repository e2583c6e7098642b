"""Reading files whose size the user controls: never more than a limit, whatever they are.

A regular file's size is known before reading; `/dev/zero`, a FIFO or a device is not, so
at most `limit + 1` bytes (or characters) are read and the extra one says "too large".
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["FileTooLarge", "read_bytes_at_most", "read_text_at_most"]

_MAX_UTF8_BYTES_PER_CHAR = 4


class FileTooLarge(Exception):
    """The file holds more than the limit; `size` is its size in bytes when it is known."""

    def __init__(self, path: Path, size: int | None) -> None:
        super().__init__(f"{path}: larger than the limit")
        self.size = size


def read_bytes_at_most(path: Path, limit: int) -> bytes:
    """The file's bytes; raises FileTooLarge past `limit` bytes (and OSError as `open` does)."""
    with path.open("rb") as file:
        size = _regular_size(file.fileno())
        if size is not None and size > limit:
            raise FileTooLarge(path, size)
        data = file.read(limit + 1)
    if len(data) > limit:
        raise FileTooLarge(path, size)
    return data


def read_text_at_most(path: Path, limit: int) -> str:
    """The file's UTF-8 text; raises FileTooLarge past `limit` characters (reading at most
    `limit + 1` of them), UnicodeDecodeError for text that is not UTF-8."""
    with path.open(encoding="utf-8") as file:
        size = _regular_size(file.fileno())
        if size is not None and size > limit * _MAX_UTF8_BYTES_PER_CHAR:
            raise FileTooLarge(path, size)
        text = file.read(limit + 1)
    if len(text) > limit:
        raise FileTooLarge(path, size)
    return text


def _regular_size(descriptor: int) -> int | None:
    status = os.fstat(descriptor)
    return status.st_size if stat.S_ISREG(status.st_mode) else None
