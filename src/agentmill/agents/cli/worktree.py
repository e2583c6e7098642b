"""Git worktrees: one private checkout per CLI step, and the diff of what the step changed.

Each step that edits a repository gets its own worktree on its own branch,
`agentmill/<run>/<step>`, under `<root>/<run>/<step>`, so parallel steps never write into
each other's files and the user's checkout is never touched. Opening is idempotent: an
interrupted step that runs again gets the same worktree back with the files it left, and
the commit it started from is kept beside it (`<root>/<run>/<step>.base`) so its diff still
covers everything it did, its own commits included.

git runs with `create_subprocess_exec` (never a shell), with only PATH and HOME inherited
and prompts off. `git worktree add/remove` of one repository are serialised with a lock per
repository (and tried once more when git reports a lock held by another process): git's
shared administrative files do not take concurrent writers well.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from agentmill.errors import MissingDependencyError, RunFailure, UserError

__all__ = [
    "GitError",
    "Worktree",
    "WorktreeDiff",
    "commit_worktree",
    "diff_worktree",
    "open_worktree",
    "remove_worktree",
    "sanitise",
]

_LOCK_RETRY_DELAY = 0.5
_LOCK_MARKERS = ("index.lock", ".lock': File exists", "Unable to create", "could not lock")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_MAX_COMPONENT = 80


class GitError(RunFailure):
    """A git command that failed; carries its arguments and what git said."""

    def __init__(self, args: tuple[str, ...], returncode: int, stderr: str) -> None:
        self.args_run = args
        self.returncode = returncode
        self.stderr = stderr
        said = stderr.strip() or f"exit code {returncode}"
        super().__init__(f"git {' '.join(args)} failed: {said}")


@dataclass(frozen=True, kw_only=True)
class Worktree:
    """A step's checkout: where it is, its branch, and the commit the branch started from."""

    path: Path
    branch: str
    base: str


@dataclass(frozen=True, kw_only=True)
class WorktreeDiff:
    """Everything changed in a worktree since its base: files, `--stat`, and the patch."""

    files: tuple[str, ...]
    stat: str
    patch: str
    truncated: bool
    """Whether `patch` was cut at `max_patch` bytes."""


def sanitise(name: str) -> str:
    """A branch- and path-safe form of a run id or step key, e.g. `review[3]` -> `review-3-…`.

    Characters other than letters, digits, `_`, `.` and `-` become `-`; a name that had to
    change gets a short hash of the original, so `a[3]` and `a-3` stay two worktrees.
    """
    cleaned = _UNSAFE.sub("-", name).strip(".-")
    cleaned = re.sub(r"\.{2,}", ".", cleaned)[:_MAX_COMPONENT].rstrip(".-")
    cleaned = cleaned.removesuffix(".lock")
    if cleaned == name and cleaned:
        return cleaned
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{cleaned}-{digest}" if cleaned else f"x-{digest}"


async def open_worktree(repo: Path, root: Path, run_id: str, step_key: str) -> Worktree:
    """The worktree of (run_id, step_key): the existing one, or a new one from `repo`'s HEAD.

    Raises UserError when `repo` is not a git repository or has no commit yet.
    """
    toplevel = await _toplevel(repo)
    run, key = sanitise(run_id), sanitise(step_key)
    path = _absolute(root) / run / key
    branch = f"agentmill/{run}/{key}"
    base_file = path.parent / f"{key}.base"
    async with _repo_lock(toplevel):
        base = await _base(toplevel, base_file, branch)
        if await _is_worktree(toplevel, path):
            return Worktree(path=path, branch=branch, base=base)
        await _git(toplevel, "worktree", "prune")
        if await _branch_exists(toplevel, branch):
            await _git_retrying(toplevel, "worktree", "add", str(path), branch)
        else:
            await _git_retrying(toplevel, "worktree", "add", "-b", branch, str(path), base)
    return Worktree(path=path, branch=branch, base=base)


async def diff_worktree(
    tree: Worktree, max_patch: int = 200_000, *, ignore: Sequence[str] = ()
) -> WorktreeDiff:
    """What changed since `tree.base`: edits, new untracked files and the tool's commits.

    Stages everything (`git add -A`) in the worktree's own index but the files `ignore`
    matches (gitignore-style patterns: the tool's bookkeeping), then diffs the index
    against the base commit. The patch is read up to `max_patch` bytes and cut there.
    """
    cwd = tree.path
    diff = ("diff", "--cached", "--no-color", "--no-ext-diff", "--no-textconv")
    paths = _pathspec(ignore)
    await _git_retrying(cwd, "add", "-A", *paths)
    names = await _git(cwd, *diff, "--name-only", "-z", tree.base, *paths)
    stat = await _git(cwd, *diff, "--stat", tree.base, *paths)
    patch, truncated = await _git_capped(cwd, (*diff, tree.base, *paths), max_patch)
    files = tuple(name for name in names.split("\0") if name)
    return WorktreeDiff(files=files, stat=stat, patch=patch, truncated=truncated)


async def commit_worktree(
    tree: Worktree, message: str, *, ignore: Sequence[str] = ()
) -> str | None:
    """Commit everything changed in the worktree but what `ignore` matches on its branch;
    the new commit, or None when there was nothing to commit.

    Hooks and signing are skipped (a step's clean-up must not wait on a pre-commit hook or
    a GPG prompt); the author is the user's git identity, or `agentmill` when none is set.
    """
    cwd = tree.path
    await _git_retrying(cwd, "add", "-A", *_pathspec(ignore))
    if not await _has_staged_changes(cwd):
        return None
    identity = [] if await _has_identity(cwd) else list(_FALLBACK_IDENTITY)
    options = [*identity, "-c", "commit.gpgsign=false"]
    await _git_retrying(cwd, *options, "commit", "--quiet", "--no-verify", "-m", message)
    return (await _git(cwd, "rev-parse", "HEAD")).strip()


async def remove_worktree(repo: Path, tree: Worktree, *, delete_branch: bool) -> None:
    """Remove the worktree (its files too) and, if asked, its branch. Idempotent."""
    toplevel = await _toplevel(repo)
    async with _repo_lock(toplevel):
        if await _is_worktree(toplevel, tree.path):
            await _git_retrying(toplevel, "worktree", "remove", "--force", str(tree.path))
        await _git(toplevel, "worktree", "prune")
        if delete_branch and await _branch_exists(toplevel, tree.branch):
            await _git(toplevel, "branch", "-D", tree.branch)
        _forget(tree.path)


def _forget(path: Path) -> None:
    """Remove a removed worktree's base file, and its run's folder once it is empty."""
    (path.parent / f"{path.name}.base").unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        path.parent.rmdir()


# --- helpers -----------------------------------------------------------------------------

_FALLBACK_IDENTITY = ("-c", "user.name=agentmill", "-c", "user.email=agentmill@localhost")


def _pathspec(ignore: Sequence[str]) -> tuple[str, ...]:
    """Git pathspecs for the whole worktree but the gitignore-style patterns `ignore`: one
    without a slash matches at any depth, one with a slash from the top; both also match
    everything under a directory of that name. Not the repository's `info/exclude`: it is
    shared with the user's checkout and every other worktree."""
    if not ignore:
        return ()
    excluded: list[str] = []
    for pattern in ignore:
        anchored = "/" in pattern.rstrip("/")
        name = pattern.strip("/") if anchored else f"**/{pattern.rstrip('/')}"
        excluded += [f":(exclude,glob){name}", f":(exclude,glob){name}/**"]
    return ("--", ".", *excluded)


async def _has_staged_changes(cwd: Path) -> bool:
    try:
        await _git(cwd, "diff", "--cached", "--quiet", "--no-ext-diff")
    except GitError as exc:
        if exc.returncode == 1:
            return True
        raise
    return False


async def _has_identity(cwd: Path) -> bool:
    try:
        await _git(cwd, "config", "user.email")
        await _git(cwd, "config", "user.name")
    except GitError:
        return False
    return True


async def _toplevel(repo: Path) -> Path:
    if not _is_dir(repo):
        raise UserError(f"{repo} is not a directory; point the agent's repo at a git repository")
    try:
        top = await _git(repo, "rev-parse", "--show-toplevel")
    except GitError:
        raise UserError(
            f"{repo} is not a git repository: run `git init && git add -A &&"
            " git commit -m init` there, or point the agent at a repository"
        ) from None
    toplevel = Path(top.strip())
    try:
        await _git(toplevel, "rev-parse", "--verify", "--quiet", "HEAD^{commit}")
    except GitError:
        raise UserError(
            f"git repository {toplevel} has no commit yet: run `git add -A &&"
            " git commit -m init` there first (a worktree starts from a commit)"
        ) from None
    return _resolve(toplevel)


async def _base(toplevel: Path, base_file: Path, branch: str) -> str:
    """The stored base commit, else one stored now: HEAD, or where an existing branch of
    this step forked from HEAD. Stored before the worktree exists, so a crash between the
    two still finds the base on the next attempt."""
    stored = _read_base(base_file)
    if stored:
        return stored
    if await _branch_exists(toplevel, branch):
        head = (await _git(toplevel, "merge-base", "HEAD", branch)).strip()
    else:
        head = (await _git(toplevel, "rev-parse", "--verify", "HEAD^{commit}")).strip()
    _write_base(base_file, head)
    return head


async def _is_worktree(toplevel: Path, path: Path) -> bool:
    """Whether git lists `path` as a worktree of the repository and the folder is there."""
    listing = await _git(toplevel, "worktree", "list", "--porcelain")
    return _listed(listing, path)


# Small blocking file-system calls, kept out of the coroutines (each is a stat or a read of
# a few bytes: not worth a thread).


def _absolute(path: Path) -> Path:
    return path.absolute()


def _resolve(path: Path) -> Path:
    return path.resolve()


def _is_dir(path: Path) -> bool:
    return path.is_dir()


def _read_base(base_file: Path) -> str | None:
    try:
        return base_file.read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        return None


def _write_base(base_file: Path, commit: str) -> None:
    base_file.parent.mkdir(parents=True, exist_ok=True)
    partial = base_file.with_name(base_file.name + ".tmp")
    partial.write_text(commit + "\n", encoding="utf-8")
    partial.replace(base_file)


def _listed(listing: str, path: Path) -> bool:
    wanted = path.resolve()
    for line in listing.splitlines():
        if line.startswith("worktree ") and Path(line[len("worktree ") :]).resolve() == wanted:
            return path.is_dir()
    return False


async def _branch_exists(toplevel: Path, branch: str) -> bool:
    try:
        await _git(toplevel, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}")
    except GitError:
        return False
    return True


def _git_env() -> dict[str, str]:
    env = {name: os.environ[name] for name in ("PATH", "HOME") if name in os.environ}
    env["GIT_TERMINAL_PROMPT"] = "0"
    env["LC_ALL"] = "C"  # git's messages in English: the lock retry reads them
    return env


async def _git_retrying(cwd: Path, *args: str) -> str:
    """`_git`, tried once more after a pause when git reports a lock another process holds."""
    try:
        return await _git(cwd, *args)
    except GitError as exc:
        if not any(marker in exc.stderr for marker in _LOCK_MARKERS):
            raise
    await asyncio.sleep(_LOCK_RETRY_DELAY)
    return await _git(cwd, *args)


async def _git(cwd: Path, *args: str) -> str:
    out, _ = await _git_capped(cwd, args, None)
    return out


async def _git_capped(cwd: Path, args: tuple[str, ...], limit: int | None) -> tuple[str, bool]:
    """Run git in `cwd`; stdout (cut at `limit` bytes) and whether it was cut."""
    try:
        proc = await asyncio.create_subprocess_exec(
            "git",
            "-C",
            str(cwd),
            # No background `git gc` / maintenance: a detached process would outlive the
            # call (and, the worker being a subreaper, end as its zombie).
            "-c",
            "gc.auto=0",
            "-c",
            "maintenance.auto=false",
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=_git_env(),
        )
    except FileNotFoundError:
        raise MissingDependencyError(
            "git is not installed or not on PATH; install git to run CLI agents in worktrees"
        ) from None
    assert proc.stdout is not None
    assert proc.stderr is not None
    try:
        (out, truncated), err = await asyncio.gather(
            _read(proc, proc.stdout, limit), proc.stderr.read()
        )
        returncode = await proc.wait()
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    if returncode != 0 and not truncated:
        raise GitError(args, returncode, err.decode("utf-8", "replace"))
    return out.decode("utf-8", "replace"), truncated


async def _read(
    proc: asyncio.subprocess.Process, stream: asyncio.StreamReader, limit: int | None
) -> tuple[bytes, bool]:
    """The stream up to `limit` bytes; past it, git is killed rather than read to the end."""
    if limit is None:
        return await stream.read(), False
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = await stream.read(65536)
        if not chunk:
            return b"".join(chunks), False
        chunks.append(chunk)
        size += len(chunk)
    proc.kill()
    return b"".join(chunks)[:limit], True


_LOCKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Path, asyncio.Lock]] = (
    weakref.WeakKeyDictionary()
)
"""One lock per repository per event loop (an asyncio.Lock belongs to one loop)."""


def _repo_lock(toplevel: Path) -> asyncio.Lock:
    locks = _LOCKS.setdefault(asyncio.get_running_loop(), {})
    return locks.setdefault(toplevel, asyncio.Lock())
