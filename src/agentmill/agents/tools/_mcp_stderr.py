"""A stdio MCP server's stderr: kept off the user's terminal, logged at debug, its tail kept.

The MCP SDK writes a server's stderr to the file it is given (the terminal by default), where
a chatty server would scribble over the CLI's live view. We give it the write end of a pipe
and read the other end on the event loop (non-blocking reads, no thread): each line goes to
the `agentmill.tools.mcp` logger at debug level until a byte cap, and the last lines are kept
for the message of a server that fails to start or stops during a call.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
from typing import TextIO

__all__ = ["StderrPipe"]

logger = logging.getLogger("agentmill.tools.mcp")

LOG_CAP_BYTES = 64 * 1024
"""How much of one connection's stderr is logged; the rest is read and dropped."""
TAIL_LINES = 8
"""How many of the last lines an error message quotes."""
LINE_CHARS = 400
"""Longer lines are cut in the log and in error messages."""


class StderrPipe:
    """One server connection's stderr: `open()` gives the file the server writes to."""

    def __init__(self, server: str) -> None:
        self._server = server
        self._read_fd: int | None = None
        self._writer: TextIO | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._partial = b""
        self._logged = 0
        self._tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)

    def open(self) -> TextIO:
        """A new pipe read on the running loop; the returned file is its write end."""
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(read_fd, self._read_available)
        self._read_fd = read_fd
        self._writer = os.fdopen(write_fd, "w")
        return self._writer

    def tail(self) -> str:
        """The last lines written so far (what is in the pipe read first), one per line."""
        self._read_available()
        lines = list(self._tail)
        if self._partial:
            lines.append(_cut(self._partial))
        return "\n".join(lines)

    def close(self) -> None:
        """Read what is left, stop reading and close both ends (the server has stopped)."""
        self._read_available()
        if self._partial:
            self._line(self._partial)
            self._partial = b""
        if self._read_fd is not None and self._loop is not None:
            self._loop.remove_reader(self._read_fd)
            os.close(self._read_fd)
        if self._writer is not None:
            self._writer.close()
        self._read_fd = self._writer = self._loop = None

    def _read_available(self) -> None:
        while self._read_fd is not None:
            try:
                chunk = os.read(self._read_fd, 65536)
            except BlockingIOError:
                return
            if not chunk:
                return
            *lines, self._partial = (self._partial + chunk).split(b"\n")
            for line in lines:
                self._line(line)
            if len(self._partial) > LINE_CHARS * 4:
                self._line(self._partial)
                self._partial = b""

    def _line(self, raw: bytes) -> None:
        line = _cut(raw)
        if not line.strip():
            return
        self._tail.append(line)
        if self._logged < LOG_CAP_BYTES:
            self._logged += len(raw) + 1
            logger.debug("MCP server '%s' (stderr): %s", self._server, line)
            if self._logged >= LOG_CAP_BYTES:
                logger.debug("MCP server '%s': further stderr is not logged", self._server)


def _cut(raw: bytes) -> str:
    text = raw.decode("utf-8", errors="replace").rstrip("\r")
    return text if len(text) <= LINE_CHARS else text[:LINE_CHARS] + "..."
