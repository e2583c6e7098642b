"""The built-in file tools: read_file, list_files, search_files, write_file.

Each is an async function whose docstring and signature are the schema the model sees; the
file work runs in a thread (it is blocking) on a `Workspace`, which refuses every path
outside the step's workspace. A refusal, a missing file or a bad argument is raised as
`ModelRetry`: the model reads the message and corrects its call; the step goes on.

Every answer is bounded by `max_output` bytes (with a note saying how to read on), so a
model cannot pull a 1 GB file or a whole repository's search hits into its context.

Idempotency: a write replaces the whole file with the given content, so a call repeated
after a crash (same idempotency key) leaves the same file; reads have no effect to repeat.
"""

from __future__ import annotations

import asyncio
import fnmatch
import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic_ai import ModelRetry

from agentmill.agents.tools.workspace import (
    Entry,
    Found,
    Location,
    Refused,
    Workspace,
    workspace_for,
)

__all__ = [
    "list_files_tool",
    "read_file_tool",
    "search_files_tool",
    "workspace_for_tool",
    "write_file_tool",
]

_BINARY_SNIFF = 8192  # a NUL byte in the first bytes marks a file as binary
_MAX_ENTRIES = 1000  # entries listed at most
_MAX_MATCHES = 200  # search hits shown at most
_MATCH_LINE = 240  # characters shown of a matching line
_SEARCH_FILE_MAX = 4 * 1024 * 1024  # larger files are skipped by search
_SEARCH_TOTAL_MAX = 256 * 1024 * 1024  # bytes a search reads at most
_SEARCH_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_T = TypeVar("_T")


async def _in_thread(work: Callable[[], _T]) -> _T:
    """Run blocking file work off the event loop; a refusal becomes the model's retry."""
    try:
        return await asyncio.to_thread(work)
    except Refused as refused:
        raise ModelRetry(str(refused)) from None


def read_file_tool(workspace: Path | None, max_output: int) -> Callable[..., Any]:
    async def read_file(path: str, offset: int = 1, limit: int | None = None) -> str:
        """Read a text file of the workspace.

        Long files come in parts: the answer then ends with a note giving the offset to
        read on from.

        Args:
            path: The file's path, relative to the workspace root (e.g. 'src/app.py').
            offset: The first line to return, counting from 1.
            limit: How many lines to return at most (default: as many as fit).
        """
        if offset < 1 or (limit is not None and limit < 1):
            raise ModelRetry("offset and limit count lines from 1: give positive numbers")
        space = workspace_for_tool(workspace)
        return await _in_thread(lambda: _read(space, space.locate(path), offset, limit, max_output))

    return read_file


def _read(
    space: Workspace, location: Location, offset: int, limit: int | None, max_output: int
) -> str:
    with space.open_read(location) as fd:
        size = os.fstat(fd).st_size
        if b"\x00" in os.pread(fd, _BINARY_SNIFF, 0):
            return f"[{location.shown} is a binary file of {size:,} bytes: it cannot be shown]"
        with open(fd, "rb", closefd=False) as file:
            chunks = iter(lambda: file.readline(max_output + 1), b"")
            page = _page(_whole_lines(chunks), offset, limit, max_output)
    return page.render(location.shown, offset, max_output)


@dataclass(kw_only=True)
class _Page:
    """The lines of one read_file answer, and whether the file goes on after them."""

    lines: list[bytes] = field(default_factory=list)
    last: int = 0  # the number of the last line read
    more: bool = False
    cut: bool = False  # the last line shown was longer than max_output: its end is missing

    def render(self, shown: str, offset: int, max_output: int) -> str:
        if not self.lines:
            if self.last == 0:
                return f"[{shown} is empty]"
            return f"[{shown} has {self.last} lines: offset {offset} is past its end]"
        text = b"".join(self.lines).decode("utf-8", "replace")
        if not (self.more or self.cut):
            return text
        end = offset + len(self.lines) - 1
        notes = [f"lines {offset}-{end} of {shown} shown"]
        if self.cut:
            notes.append(f"line {end} is longer than {max_output:,} bytes and was cut")
        if self.more:
            notes.append(f"the file goes on: read_file with offset={end + 1} for more")
        separator = "" if text.endswith("\n") else "\n"
        return f"{text}{separator}[{'; '.join(notes)}]"


def _page(lines: Iterator[bytes], offset: int, limit: int | None, max_output: int) -> _Page:
    """Lines `offset`.. of the file, up to `limit` lines and `max_output` bytes (the first
    line shown always, cut to `max_output` bytes if it is longer)."""
    page = _Page()
    used = 0
    for raw in lines:
        page.last += 1
        if page.last < offset:
            continue
        full = limit is not None and len(page.lines) >= limit
        if full or (page.lines and used + len(raw) > max_output):
            page.more = True
            break
        page.lines.append(raw[:max_output])
        used += len(raw)
        if len(raw) > max_output:
            page.cut = True
            used = max_output
    return page


def _whole_lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """One item per line from `readline(n)` chunks: an over-long line comes as its first
    chunk only, the rest skipped (memory stays bounded whatever the file holds)."""
    inside_long_line = False
    for chunk in chunks:
        if not inside_long_line:
            yield chunk
        inside_long_line = not chunk.endswith(b"\n")


def list_files_tool(workspace: Path | None, max_output: int) -> Callable[..., Any]:
    async def list_files(path: str = ".", pattern: str | None = None) -> str:
        """List the files and directories under a directory of the workspace, recursively.

        Directories end with '/', files show their size; '.git' is not entered.

        Args:
            path: The directory to list, relative to the workspace root.
            pattern: List only the files whose name or path matches this glob (e.g. '*.py'
                or 'tests/*'); '*' also matches '/'.
        """
        space = workspace_for_tool(workspace)

        def listing() -> str:
            walk = space.walk(space.locate(path))
            try:
                entries = (f.entry for f in walk)
                if pattern is not None:
                    entries = (e for e in entries if _matches(e, pattern))
                lines = (_listed(entry) for entry in entries)
                return _bounded(lines, max_output, what="entries", hint="list a subdirectory")
            finally:
                walk.close()

        return await _in_thread(listing)

    return list_files


def _listed(entry: Entry) -> str:
    if entry.kind == "dir":
        return entry.path + "/"
    if entry.kind == "file":
        return f"{entry.path}  ({entry.size:,} bytes)"
    return f"{entry.path}  ({entry.kind})"


def _matches(entry: Entry, glob: str) -> bool:
    if entry.kind != "file":
        return False
    name = entry.path.rsplit("/", 1)[-1]
    return fnmatch.fnmatchcase(entry.path, glob) or fnmatch.fnmatchcase(name, glob)


def _bounded(lines: Iterable[str], max_output: int, *, what: str, hint: str) -> str:
    """Lines joined, up to `_MAX_ENTRIES` of them and `max_output` bytes, noted if cut."""
    kept: list[str] = []
    used = 0
    for line in lines:
        size = len(line.encode()) + 1
        if len(kept) >= _MAX_ENTRIES or used + size > max_output:
            kept.append(f"[more {what} follow, not shown: {hint}]")
            break
        kept.append(line)
        used += size
    return "\n".join(kept) if kept else f"[no {what}]"


def search_files_tool(workspace: Path | None, max_output: int) -> Callable[..., Any]:
    async def search_files(pattern: str, path: str = ".", glob: str | None = None) -> str:
        """Search the text files of the workspace for lines matching a pattern.

        Answers 'path:line: text' for each matching line. Binary files, files over 4 MB
        and '.git' are skipped.

        Args:
            pattern: A regular expression (Python syntax, e.g. 'def \\w+_test' or
                '(?i)todo'); text that is not a valid expression is searched as it is.
            path: The directory (or file) to search, relative to the workspace root.
            glob: Search only the files whose name or path matches this glob (e.g. '*.py').
        """
        space = workspace_for_tool(workspace)
        expression = _expression(pattern)

        def search() -> str:
            walk = space.walk(space.locate(path))
            try:
                hits = _search(walk, expression, glob)
                return _bounded(hits, max_output, what="matches", hint="narrow path or glob")
            finally:
                walk.close()

        return await _in_thread(search)

    return search_files


def _expression(pattern: str) -> re.Pattern[str]:
    if not pattern:
        raise ModelRetry("the search pattern is empty: give the text or expression to find")
    try:
        return re.compile(pattern)
    except re.error:
        return re.compile(re.escape(pattern))


def _search(walk: Iterator[Found], expression: re.Pattern[str], glob: str | None) -> Iterator[str]:
    shown = 0
    read = 0
    for found in walk:
        entry = found.entry
        if entry.kind != "file" or entry.size > _SEARCH_FILE_MAX:
            continue
        if glob is not None and not _matches(entry, glob):
            continue
        if read > _SEARCH_TOTAL_MAX:
            yield "[the search stopped after reading 256 MB: narrow path or glob]"
            return
        read += entry.size
        for number, line in _text_lines(found):
            if expression.search(line):
                yield f"{entry.path}:{number}: {line[:_MATCH_LINE]}"
                shown += 1
                if shown >= _MAX_MATCHES:
                    yield f"[the first {_MAX_MATCHES} matches are shown: narrow path or glob]"
                    return


def _text_lines(found: Found) -> Iterator[tuple[int, str]]:
    """The numbered lines of a text file met by a walk (nothing for a binary one)."""
    name = found.entry.path.rsplit("/", 1)[-1]
    try:
        fd = os.open(name, _SEARCH_FLAGS, dir_fd=found.parent)
    except OSError:
        return  # replaced by a symlink, a pipe or removed since it was listed
    with open(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return  # a pipe or device swapped in since it was listed
        data = file.read(_SEARCH_FILE_MAX)
    if b"\x00" in data[:_BINARY_SNIFF]:
        return
    yield from enumerate(data.decode("utf-8", "replace").splitlines(), start=1)


def write_file_tool(workspace: Path | None) -> Callable[..., Any]:
    async def write_file(path: str, content: str) -> str:
        """Write a text file of the workspace: create it, or replace all its content.

        Missing parent directories are created.

        Args:
            path: The file's path, relative to the workspace root (e.g. 'docs/notes.md').
            content: The whole new content of the file.
        """
        space = workspace_for_tool(workspace)
        data = content.encode()

        def write() -> str:
            location = space.locate(path)
            existed = space.write(location, data)
            verb = "replaced" if existed else "created"
            return f"{verb} {location.relative} ({len(data):,} bytes)"

        return await _in_thread(write)

    return write_file


def workspace_for_tool(explicit: Path | None) -> Workspace:
    """The tool's workspace; none is a refusal the model reads (and tells the user)."""
    try:
        return workspace_for(explicit)
    except Refused as refused:
        raise ModelRetry(str(refused)) from None
