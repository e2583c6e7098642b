"""Worktrees with real git: one per step, idempotent, diffs that see every change."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agentmill.agents.cli.worktree import (
    Worktree,
    commit_worktree,
    diff_worktree,
    open_worktree,
    remove_worktree,
    sanitise,
)
from agentmill.errors import UserError
from tests.cli_agents.gitrepo import git, git_env, make_repo

FAKES = Path(__file__).parents[1] / "fixtures" / "fake_cli"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo", {"README.md": "# hello\n", "src/app.py": "x = 1\n"})


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "worktrees"


async def test_parallel_worktrees_keep_their_changes_apart(repo: Path, root: Path) -> None:
    left, right = await asyncio.gather(
        open_worktree(repo, root, "run-1", "left"), open_worktree(repo, root, "run-1", "right")
    )
    assert left.path != right.path
    assert left.branch != right.branch
    assert left.base == right.base == git(repo, "rev-parse", "HEAD").strip()
    (left.path / "left.txt").write_text("left\n")
    (right.path / "README.md").write_text("# changed on the right\n")
    left_diff, right_diff = await asyncio.gather(diff_worktree(left), diff_worktree(right))
    assert left_diff.files == ("left.txt",)
    assert right_diff.files == ("README.md",)
    assert "+left" in left_diff.patch
    assert "README" not in left_diff.patch
    assert "+# changed on the right" in right_diff.patch
    assert "1 file changed" in right_diff.stat
    assert git(repo, "status", "--porcelain") == ""  # the user's checkout is untouched


async def test_many_worktrees_of_one_repo_at_once(repo: Path, root: Path) -> None:
    trees = await asyncio.gather(*(open_worktree(repo, root, "r", f"s{i}") for i in range(6)))
    assert len({tree.path for tree in trees}) == 6
    listing = git(repo, "worktree", "list", "--porcelain")
    assert all(f"worktree {tree.path.resolve()}" in listing for tree in trees)


async def test_reopen_returns_the_same_worktree_with_its_files(repo: Path, root: Path) -> None:
    first = await open_worktree(repo, root, "run-1", "fix")
    (first.path / "work.txt").write_text("half done\n")
    git(repo, "commit", "--allow-empty", "-q", "-m", "main moved on")
    again = await open_worktree(repo, root, "run-1", "fix")
    assert again == first  # same path, branch and base, though HEAD moved
    assert (again.path / "work.txt").read_text() == "half done\n"


async def test_reopen_after_the_folder_was_lost(repo: Path, root: Path) -> None:
    first = await open_worktree(repo, root, "run-1", "fix")
    git(
        first.path,
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@t",
        "commit",
        "--allow-empty",
        "-qm",
        "x",
    )
    shutil.rmtree(first.path)
    again = await open_worktree(repo, root, "run-1", "fix")
    assert again == first
    assert (again.path / "README.md").is_file()
    assert git(again.path, "log", "-1", "--format=%s").strip() == "x"  # the branch came back


async def test_diff_sees_edits_untracked_files_and_commits(repo: Path, root: Path) -> None:
    tree = await open_worktree(repo, root, "run-1", "all")
    (tree.path / "src" / "app.py").write_text("x = 2\n")
    (tree.path / "new dir").mkdir()
    (tree.path / "new dir" / "untracked.txt").write_text("new\n")
    (tree.path / "committed.txt").write_text("committed\n")
    git(tree.path, "add", "committed.txt")
    git(tree.path, "commit", "-q", "-m", "tool commit")
    diff = await diff_worktree(tree)
    assert set(diff.files) == {"src/app.py", "new dir/untracked.txt", "committed.txt"}
    assert "+x = 2" in diff.patch
    assert "+new" in diff.patch
    assert "+committed" in diff.patch
    assert "3 files changed" in diff.stat
    assert not diff.truncated


async def test_diff_includes_what_a_tool_committed_itself(repo: Path, root: Path) -> None:
    tree = await open_worktree(repo, root, "run-1", "aider")
    env = {**git_env(), "FAKE_CLI_WRITE": "aider.txt"}
    await asyncio.to_thread(
        subprocess.run,
        [sys.executable, str(FAKES / "fake_aider.py"), "--message=add a file"],
        cwd=tree.path,
        env=env,
        check=True,
        capture_output=True,
    )
    untracked = git(tree.path, "status", "--porcelain").splitlines()
    assert all(line.startswith("?? .aider") for line in untracked), untracked
    diff = await diff_worktree(tree, ignore=[".aider*"])
    assert diff.files == ("aider.txt",)


async def test_ignored_bookkeeping_stays_out_of_the_diff_and_the_commit(
    repo: Path, root: Path
) -> None:
    tree = await open_worktree(repo, root, "run-1", "tool")
    files = {
        "work.txt": "the work",
        ".tool.history": "top",
        "sub/.tool.history": "nested",
        ".tool.cache/index": "cache dir",
        "logs/run.log": "anchored",
        "sub/logs/kept.log": "not under the anchored pattern",
    }
    for name, text in files.items():
        (tree.path / name).parent.mkdir(parents=True, exist_ok=True)
        (tree.path / name).write_text(text)
    ignore = [".tool*", "/logs/"]
    diff = await diff_worktree(tree, ignore=ignore)
    assert set(diff.files) == {"work.txt", "sub/logs/kept.log"}
    assert ".tool" not in diff.patch
    assert await commit_worktree(tree, "step", ignore=ignore)
    changed = git(tree.path, "diff", "--name-only", tree.base, "HEAD").split()
    assert set(changed) == {"work.txt", "sub/logs/kept.log"}


async def test_an_unchanged_worktree_has_an_empty_diff(repo: Path, root: Path) -> None:
    diff = await diff_worktree(await open_worktree(repo, root, "run-1", "idle"))
    assert (diff.files, diff.stat, diff.patch, diff.truncated) == ((), "", "", False)


async def test_a_big_patch_is_cut(repo: Path, root: Path) -> None:
    tree = await open_worktree(repo, root, "run-1", "big")
    (tree.path / "big.txt").write_text("é line of text\n" * 50_000)
    diff = await diff_worktree(tree, max_patch=1000)
    assert diff.truncated
    assert len(diff.patch.encode()) <= 1003  # a cut multi-byte character becomes U+FFFD
    assert diff.files == ("big.txt",)


async def test_a_held_index_lock_is_waited_for_once(repo: Path, root: Path) -> None:
    tree = await open_worktree(repo, root, "run-1", "locked")
    (tree.path / "f.txt").write_text("f\n")
    git_dir = Path(git(tree.path, "rev-parse", "--absolute-git-dir").strip())
    lock = git_dir / "index.lock"
    lock.write_text("")
    asyncio.get_running_loop().call_later(0.1, lock.unlink)
    diff = await diff_worktree(tree)
    assert diff.files == ("f.txt",)


async def test_remove_keeps_or_deletes_the_branch(repo: Path, root: Path) -> None:
    kept = await open_worktree(repo, root, "run-1", "kept")
    gone = await open_worktree(repo, root, "run-1", "gone")
    (kept.path / "dirty.txt").write_text("uncommitted\n")
    await remove_worktree(repo, kept, delete_branch=False)
    await remove_worktree(repo, gone, delete_branch=True)
    assert not kept.path.exists()
    assert not gone.path.exists()
    branches = git(repo, "branch", "--list", "agentmill/*")
    assert kept.branch in branches
    assert gone.branch not in branches
    await remove_worktree(repo, gone, delete_branch=True)  # twice is fine
    assert not (root / "run-1").exists()


async def test_not_a_repository(tmp_path: Path, root: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(UserError, match=r"plain is not a git repository.*git init"):
        await open_worktree(plain, root, "r", "s")
    with pytest.raises(UserError, match="missing is not a directory"):
        await open_worktree(tmp_path / "missing", root, "r", "s")


async def test_a_repository_without_commits(tmp_path: Path, root: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    git(empty, "init", "-q")
    with pytest.raises(UserError, match=r"empty has no commit yet.*git commit"):
        await open_worktree(empty, root, "r", "s")


@pytest.mark.parametrize(
    "name", ["review[3]", "review-3", "a/b", "..", ".hidden", "x.lock", "@{u}", "spaces here", ""]
)
def test_sanitised_names_are_valid_refs(name: str) -> None:
    safe = sanitise(name)
    done = subprocess.run(
        ["git", "check-ref-format", f"refs/heads/agentmill/{safe}/{safe}"], check=False
    )
    assert done.returncode == 0, safe
    assert "/" not in safe


def test_sanitise_keeps_plain_names_and_separates_the_rest() -> None:
    assert sanitise("review-3") == "review-3"
    assert sanitise("review[3]").startswith("review-3-")
    assert sanitise("review[3]") != sanitise("review-3")
    assert sanitise("review[3]") == sanitise("review[3]")


async def test_foreach_keys_get_their_own_worktrees(repo: Path, root: Path) -> None:
    trees: list[Worktree] = [await open_worktree(repo, root, "r", f"review[{i}]") for i in range(2)]
    assert trees[0].path != trees[1].path
    assert all(tree.path.is_dir() for tree in trees)


async def test_commit_worktree_commits_everything_on_the_branch(repo: Path, root: Path) -> None:
    tree = await open_worktree(repo, root, "run-1", "commit")
    assert await commit_worktree(tree, "nothing yet") is None
    (tree.path / "README.md").write_text("# edited\n")
    (tree.path / "new.txt").write_text("new\n")
    sha = await commit_worktree(tree, "agentmill: run run-1, step commit")
    assert sha == git(repo, "rev-parse", tree.branch).strip()
    assert git(tree.path, "status", "--porcelain") == ""
    assert git(repo, "log", "-1", "--format=%s%n%an", tree.branch).split("\n")[:2] == [
        "agentmill: run run-1, step commit",
        "agentmill tests",  # the repository's own identity
    ]
    diff = await diff_worktree(tree)
    assert set(diff.files) == {"README.md", "new.txt"}  # still measured from the base


async def test_commit_worktree_without_a_git_identity(
    repo: Path, root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    git(repo, "config", "--unset", "user.name")
    git(repo, "config", "--unset", "user.email")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.gitconfig either
    tree = await open_worktree(repo, root, "run-1", "anon")
    (tree.path / "f.txt").write_text("f\n")
    assert await commit_worktree(tree, "anonymous") is not None
    assert git(repo, "log", "-1", "--format=%an <%ae>", tree.branch).strip() == (
        "agentmill <agentmill@localhost>"
    )
