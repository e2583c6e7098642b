"""Paths a model names, confined to a step's workspace.

A path is resolved the way the kernel would (symlinks followed, `..` applied) and refused
unless what it names lies inside the workspace. It is then opened component by component
from a descriptor of the workspace root, each with `O_NOFOLLOW`: the resolved path has no
symlink left, so a symlink swapped in between the check and the open (a time-of-check /
time-of-use race) makes the open fail instead of leading outside.

    Workspace(root)
      ├─ locate(path)        -> Location: the resolved parts relative to the root, or Refused
      ├─ open_dir(parts)     -> a directory descriptor, walked without following symlinks
      ├─ open_read(location) -> a regular file opened for reading (never a FIFO or device)
      └─ write(location, data): parents created, written to a temporary file, renamed

What stays out of reach: a hard link to an outside file placed in the workspace by someone
else (the model's tools cannot make one), and anything an allowlisted program does.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import uuid
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from agentmill.agents.tools.context import current_call

__all__ = [
    "PROTECTED",
    "SKIPPED",
    "Entry",
    "Found",
    "Location",
    "Refused",
    "Workspace",
    "workspace_for",
]

SKIPPED = frozenset({".git"})
"""Directories listings and searches do not enter (a repository's object store)."""
PROTECTED = frozenset({".git"})
"""Directories no file is written into: a hook or `core.fsmonitor` planted there would run
code the next time an allowed `git` runs."""
_MAX_DEPTH = 64

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class Refused(Exception):
    """A path the model may not use, with a message the model can act on."""


@dataclass(frozen=True, kw_only=True)
class Location:
    """A path inside the workspace: its parts from the root, and how the model wrote it."""

    parts: tuple[str, ...]
    shown: str

    @property
    def relative(self) -> str:
        return "/".join(self.parts) or "."


@dataclass(frozen=True, slots=True)
class Entry:
    """One entry met by `Workspace.walk`: its path from the root, its kind and size."""

    path: str
    kind: Literal["dir", "file", "symlink", "other"]
    size: int


@dataclass(frozen=True, slots=True)
class Found:
    """An entry and a descriptor of its directory, valid until the walk moves on."""

    entry: Entry
    parent: int


class Workspace:
    """The directory a step's file tools and commands work in."""

    def __init__(self, root: Path) -> None:
        self.root = Path(os.path.realpath(root))

    def locate(self, path: str) -> Location:
        """Resolve `path` (relative to the root, or absolute) and refuse it outside."""
        if not path or "\x00" in path:
            raise Refused(f"{path!r} is not a usable path: give a path relative to the workspace")
        candidate = Path(path) if os.path.isabs(path) else self.root / path
        resolved = Path(os.path.realpath(candidate))
        if resolved != self.root and self.root not in resolved.parents:
            raise Refused(
                f"{path} is outside the workspace (it resolves to a place outside it, through"
                " '..', an absolute path or a symlink): use a path relative to the workspace"
                " root, such as 'src/main.py'"
            )
        return Location(parts=resolved.relative_to(self.root).parts, shown=path)

    @contextlib.contextmanager
    def open_dir(self, parts: tuple[str, ...], *, create: bool = False) -> Generator[int]:
        """A descriptor of the directory at `parts`, reached without following a symlink;
        with `create`, missing directories are made on the way."""
        fd = self._open_root()
        try:
            for part in parts:
                child = _enter(fd, part, create=create)
                os.close(fd)
                fd = child
            yield fd
        finally:
            os.close(fd)

    def _open_root(self) -> int:
        try:
            return os.open(self.root, _DIR_FLAGS)
        except OSError as exc:
            raise Refused(
                f"the workspace {self.root} cannot be opened ({exc.strerror or exc}):"
                " no file tool can work until it exists"
            ) from None

    @contextlib.contextmanager
    def open_read(self, location: Location) -> Generator[int]:
        """A regular file opened for reading (a FIFO or a device is refused, never waited on)."""
        if not location.parts:
            raise Refused(f"{location.shown} is a directory: use list_files to see what it holds")
        with self.open_dir(location.parts[:-1]) as parent:
            fd = _open_at(location, parent, _READ_FLAGS)
        try:
            mode = os.fstat(fd).st_mode
            if stat.S_ISDIR(mode):
                raise Refused(f"{location.shown} is a directory: use list_files to see its files")
            if not stat.S_ISREG(mode):
                raise Refused(f"{location.shown} is not a regular file (a pipe, socket or device)")
            os.set_blocking(fd, True)
            yield fd
        finally:
            os.close(fd)

    def write(self, location: Location, data: bytes) -> bool:
        """Write `data` as the whole file (through a temporary file renamed over it, so a
        reader never sees half of it); whether the file existed. Parents are created."""
        if not location.parts:
            raise Refused("the workspace root is a directory: name a file to write")
        if any(part in PROTECTED for part in location.parts):
            raise Refused(
                f"{location.shown} is inside a .git directory: git's own files (hooks, config)"
                " are not written by file tools"
            )
        name = location.parts[-1]
        with self.open_dir(location.parts[:-1], create=True) as parent:
            mode = _existing_mode(parent, location)
            temporary = f".{name}.{uuid.uuid4().hex[:12]}.tmp"
            fd = os.open(temporary, _WRITE_FLAGS, 0o644 if mode is None else mode, dir_fd=parent)
            try:
                with os.fdopen(fd, "wb", closefd=True) as file:
                    file.write(data)
                os.replace(temporary, name, src_dir_fd=parent, dst_dir_fd=parent)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temporary, dir_fd=parent)
                raise
            return mode is not None

    def walk(self, location: Location, *, skip: frozenset[str] = SKIPPED) -> Generator[Found]:
        """The entries under `location` in sorted depth-first order (the entry itself if it
        is a file), never through a symlink; directories named in `skip` are not entered."""
        if not location.parts:
            with self.open_dir(()) as top:
                yield from _walk(top, "", depth=0, skip=skip)
            return
        with self.open_dir(location.parts[:-1]) as parent:
            name = location.parts[-1]
            try:
                info = os.stat(name, dir_fd=parent, follow_symlinks=False)
            except OSError as exc:
                raise _refusal(location.shown, exc) from None
            if not stat.S_ISDIR(info.st_mode):
                yield Found(Entry(location.relative, _kind(info.st_mode), info.st_size), parent)
                return
            child = _enter(parent, name, create=False)
            try:
                yield from _walk(child, location.relative + "/", depth=0, skip=skip)
            finally:
                os.close(child)


def _enter(fd: int, part: str, *, create: bool) -> int:
    """Open the directory `part` of `fd`; refuse a symlink or a file in the way."""
    try:
        if create:
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o755, dir_fd=fd)
        return os.open(part, _DIR_FLAGS, dir_fd=fd)
    except OSError as exc:
        if exc.errno == errno.ENOTDIR and _is_symlink(fd, part):
            exc = OSError(errno.ELOOP, "a symlink")  # O_DIRECTORY | O_NOFOLLOW: ENOTDIR
        raise _refusal(part, exc) from None


def _is_symlink(fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _open_at(location: Location, parent: int, flags: int) -> int:
    try:
        return os.open(location.parts[-1], flags, dir_fd=parent)
    except OSError as exc:
        raise _refusal(location.shown, exc) from None


def _existing_mode(parent: int, location: Location) -> int | None:
    """The permission bits of the file being replaced, None if there is none."""
    try:
        info = os.stat(location.parts[-1], dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if stat.S_ISDIR(info.st_mode):
        raise Refused(f"{location.shown} is a directory: write_file writes files only")
    if not stat.S_ISREG(info.st_mode):
        raise Refused(f"{location.shown} is not a regular file (a symlink, pipe or device)")
    return stat.S_IMODE(info.st_mode)


def _refusal(shown: str, exc: OSError) -> Refused:
    """The model's version of an error met while opening a path of the workspace."""
    if exc.errno == errno.ENOENT:
        return Refused(f"{shown} does not exist: use list_files to see what there is")
    if exc.errno == errno.ELOOP:
        return Refused(
            f"{shown} is a symlink that cannot be followed (a loop, or it changed while"
            " being opened)"
        )
    if exc.errno == errno.ENOTDIR:
        return Refused(f"{shown}: a part of this path is a file, not a directory")
    if exc.errno == errno.EACCES:
        return Refused(f"{shown}: permission denied")
    if exc.errno in (errno.ENXIO, errno.EISDIR):
        return Refused(f"{shown} is not a regular file")
    return Refused(f"{shown}: {exc.strerror or exc}")


def _walk(fd: int, prefix: str, *, depth: int, skip: frozenset[str]) -> Generator[Found]:
    with os.scandir(fd) as scan:
        entries = sorted(scan, key=lambda entry: entry.name)
    for item in entries:
        try:
            info = item.stat(follow_symlinks=False)
        except OSError:
            continue  # removed since it was listed
        kind = _kind(info.st_mode)
        yield Found(Entry(prefix + item.name, kind, info.st_size), fd)
        if kind != "dir" or item.name in skip or depth >= _MAX_DEPTH:
            continue
        try:
            child = _enter(fd, item.name, create=False)
        except Refused:
            continue  # replaced or unreadable since it was listed
        try:
            yield from _walk(child, f"{prefix}{item.name}/", depth=depth + 1, skip=skip)
        finally:
            os.close(child)


def _kind(mode: int) -> Literal["dir", "file", "symlink", "other"]:
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISDIR(mode):
        return "dir"
    return "file" if stat.S_ISREG(mode) else "other"


def workspace_for(explicit: Path | None) -> Workspace:
    """The workspace a tool works in: the one it was built with, else the current call's."""
    call = current_call()
    root = explicit if explicit is not None else (call.workspace if call else None)
    if root is None:
        raise Refused(
            "this agent has no workspace, so file tools and commands cannot run: the agent's"
            " `workdir` must be set in the config (tell the user)"
        )
    return Workspace(root)
