"""A throwaway git repository with one commit, for tests of CLI agents and worktrees.

The user's and the system's git config are kept out (GIT_CONFIG_GLOBAL=/dev/null,
GIT_CONFIG_NOSYSTEM=1) and the identity is set in the repository itself, so the tests pass
on a machine where git was never configured.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

__all__ = ["git", "git_env", "make_repo"]


def git_env() -> dict[str, str]:
    """The environment the helpers run git with: PATH and HOME, no global config."""
    env = {name: os.environ[name] for name in ("PATH", "HOME") if name in os.environ}
    env.update(GIT_CONFIG_GLOBAL=os.devnull, GIT_CONFIG_NOSYSTEM="1", GIT_TERMINAL_PROMPT="0")
    return env


def git(repo: Path, *args: str) -> str:
    """Run git in `repo`; its stdout. Raises CalledProcessError (with stderr) on failure."""
    done = subprocess.run(
        ["git", "-C", str(repo), *args],
        capture_output=True,
        text=True,
        env=git_env(),
        check=False,
    )
    if done.returncode != 0:
        raise subprocess.CalledProcessError(done.returncode, done.args, done.stdout, done.stderr)
    return done.stdout


def make_repo(path: Path, files: dict[str, str] | None = None) -> Path:
    """A git repository at `path` (created) whose one commit holds `files` (a README)."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q")
    git(path, "config", "user.name", "agentmill tests")
    git(path, "config", "user.email", "tests@agentmill.invalid")
    git(path, "config", "commit.gpgsign", "false")
    for name, text in (files or {"README.md": "# test repository\n"}).items():
        target = path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "initial commit")
    return path
