"""The built-in file tools, called by a model through a real pydantic-ai agent: paths that
leave the workspace (`..`, absolute, symlinks, symlinked parents, a symlink swapped in after
the check) are refused as retries the model reads; reads and searches are bounded."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from agentmill.agents.tools.builtins import builtin_toolset
from agentmill.agents.tools.context import ToolCall, executing
from agentmill.agents.tools.workspace import Refused, Workspace
from tests.tools.helpers import Outcome, call_tool

SECRET = "the secret outside the workspace"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory next to the workspace, holding a file the model must never see."""
    directory = tmp_path / "outside"
    directory.mkdir()
    (directory / "secret.txt").write_text(SECRET)
    return directory


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    root = tmp_path / "workspace"
    (root / "src").mkdir(parents=True)
    (root / "src" / "app.py").write_text("def main():\n    return 42\n")
    (root / "README.md").write_text("# demo\nTODO: write docs\n")
    return root


async def use(tool: str, workspace: Path | None, *, max_output: int = 64 * 1024, **args: object):
    toolset = builtin_toolset(tool, workspace=workspace, max_output=max_output)
    return await call_tool(toolset, tool, **args)


def refused(outcome: Outcome, *words: str) -> bool:
    return outcome.kind == "retry" and all(w in outcome.text for w in words)


async def test_read_file_reads_a_file_of_the_workspace(workspace: Path) -> None:
    outcome = await use("read_file", workspace, path="src/app.py")
    assert outcome == Outcome("return", "def main():\n    return 42\n")
    inside_by_absolute_path = await use("read_file", workspace, path=str(workspace / "README.md"))
    assert inside_by_absolute_path.text.startswith("# demo")


@pytest.mark.parametrize("path", ["../outside/secret.txt", "src/../../outside/secret.txt"])
async def test_dot_dot_out_of_the_workspace_is_refused(
    workspace: Path, outside: Path, path: str
) -> None:
    outcome = await use("read_file", workspace, path=path)
    assert refused(outcome, "outside the workspace")
    assert SECRET not in outcome.text


async def test_an_absolute_path_outside_is_refused(workspace: Path, outside: Path) -> None:
    outcome = await use("read_file", workspace, path=str(outside / "secret.txt"))
    assert refused(outcome, "outside the workspace")
    assert refused(await use("read_file", workspace, path="/etc/passwd"), "outside")


async def test_a_symlink_pointing_out_is_refused(workspace: Path, outside: Path) -> None:
    (workspace / "innocent.txt").symlink_to(outside / "secret.txt")
    outcome = await use("read_file", workspace, path="innocent.txt")
    assert refused(outcome, "outside the workspace")
    assert SECRET not in outcome.text


async def test_a_symlink_pointing_inside_is_followed(workspace: Path) -> None:
    (workspace / "app-link.py").symlink_to(workspace / "src" / "app.py")
    outcome = await use("read_file", workspace, path="app-link.py")
    assert outcome.text.startswith("def main")


async def test_a_symlinked_parent_directory_pointing_out_is_refused(
    workspace: Path, outside: Path
) -> None:
    (workspace / "docs").symlink_to(outside, target_is_directory=True)
    read = await use("read_file", workspace, path="docs/secret.txt")
    assert refused(read, "outside the workspace")
    write = await use("write_file", workspace, path="docs/new.txt", content="planted")
    assert refused(write, "outside the workspace")
    deep = await use("write_file", workspace, path="docs/a/b/new.txt", content="planted")
    assert refused(deep, "outside the workspace")
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]


async def test_writing_through_a_symlink_pointing_out_is_refused(
    workspace: Path, outside: Path
) -> None:
    (workspace / "notes.txt").symlink_to(outside / "secret.txt")
    outcome = await use("write_file", workspace, path="notes.txt", content="overwritten")
    assert refused(outcome, "outside the workspace")
    assert (outside / "secret.txt").read_text() == SECRET


async def test_a_parent_swapped_for_a_symlink_after_the_check_is_not_followed(
    workspace: Path, outside: Path
) -> None:
    """The race between checking a path and opening it: `src` becomes a symlink to the
    outside directory after the path was resolved; the open still refuses it."""
    space = Workspace(workspace)
    read_location = space.locate("src/secret.txt")
    write_location = space.locate("src/planted.txt")
    (workspace / "src").rename(workspace / "src-moved")
    (workspace / "src").symlink_to(outside, target_is_directory=True)
    with pytest.raises(Refused, match="symlink"), space.open_read(read_location):
        pass
    with pytest.raises(Refused, match="symlink"):
        space.write(write_location, b"planted")
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]


async def test_a_file_swapped_for_a_symlink_after_the_check_is_not_followed(
    workspace: Path, outside: Path
) -> None:
    space = Workspace(workspace)
    location = space.locate("README.md")
    (workspace / "README.md").unlink()
    (workspace / "README.md").symlink_to(outside / "secret.txt")
    with pytest.raises(Refused, match="symlink"), space.open_read(location):
        pass


async def test_a_long_file_is_read_in_parts(workspace: Path) -> None:
    lines = [f"line {n:05d}\n" for n in range(1, 100_001)]  # 1.1 MB
    (workspace / "big.log").write_text("".join(lines))
    first = await use("read_file", workspace, max_output=1000, path="big.log")
    assert first.kind == "return"
    shown = first.text.splitlines()
    assert shown[:-1] == [line.rstrip("\n") for line in lines[: len(shown) - 1]]
    assert len(first.text) < 1200
    assert f"offset={len(shown)}" in shown[-1]
    page = await use("read_file", workspace, path="big.log", offset=50_000, limit=2)
    assert page.text.splitlines()[:2] == ["line 50000", "line 50001"]
    assert "offset=50002" in page.text


async def test_one_huge_line_is_cut(workspace: Path) -> None:
    (workspace / "minified.js").write_bytes(b"x" * 5_000_000 + b"\nsecond line\n")
    outcome = await use("read_file", workspace, max_output=4096, path="minified.js")
    assert outcome.text.startswith("x" * 4096)
    assert "line 1 is longer than 4,096 bytes and was cut" in outcome.text
    assert "offset=2" in outcome.text
    assert len(outcome.text) < 4300


async def test_binary_and_empty_files_are_reported(workspace: Path) -> None:
    (workspace / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 100)
    (workspace / "empty.txt").write_text("")
    binary = await use("read_file", workspace, path="image.png")
    assert binary.kind == "return"
    assert "binary file of 1,600 bytes" in binary.text
    assert (await use("read_file", workspace, path="empty.txt")).text == "[empty.txt is empty]"


async def test_a_fifo_is_refused_without_waiting(workspace: Path) -> None:
    os.mkfifo(workspace / "pipe")
    assert refused(await use("read_file", workspace, path="pipe"), "not a regular file")
    assert refused(await use("write_file", workspace, path="pipe", content="x"), "not a regular")


async def test_missing_files_and_directories_are_retries(workspace: Path) -> None:
    assert refused(await use("read_file", workspace, path="nope.txt"), "does not exist")
    assert refused(await use("read_file", workspace, path="src"), "is a directory")
    assert refused(await use("read_file", workspace, path="README.md/x"), "not a directory")


@pytest.mark.parametrize(
    ("tool", "args"),
    [
        ("read_file", {"path": "a"}),
        ("list_files", {}),
        ("search_files", {"pattern": "a"}),
        ("write_file", {"path": "a", "content": "x"}),
    ],
)
async def test_without_a_workspace_the_tools_refuse(tool: str, args: dict[str, str]) -> None:
    toolset = builtin_toolset(tool, workspace=None)
    assert refused(await call_tool(toolset, tool, **args), "no workspace", "workdir")


async def test_list_files_lists_recursively_without_following_symlinks(
    workspace: Path, outside: Path
) -> None:
    (workspace / "linked").symlink_to(outside, target_is_directory=True)
    (workspace / ".git").mkdir()
    (workspace / ".git" / "HEAD").write_text("ref")
    outcome = await use("list_files", workspace)
    assert outcome.text.splitlines() == [
        ".git/",
        "README.md  (24 bytes)",
        "linked  (symlink)",
        "src/",
        "src/app.py  (26 bytes)",
    ]
    python = await use("list_files", workspace, pattern="*.py")
    assert python.text == "src/app.py  (26 bytes)"
    assert refused(await use("list_files", workspace, path="linked"), "outside the workspace")


async def test_list_files_is_bounded(workspace: Path) -> None:
    many = workspace / "many"
    many.mkdir()
    for n in range(1500):
        (many / f"f{n:04d}.txt").write_text("")
    outcome = await use("list_files", workspace, path="many")
    lines = outcome.text.splitlines()
    assert len(lines) == 1001
    assert lines[-1].startswith("[more entries follow")


async def test_search_files_finds_lines_and_skips_what_it_must(
    workspace: Path, outside: Path
) -> None:
    (workspace / "linked").symlink_to(outside, target_is_directory=True)
    (workspace / "data.bin").write_bytes(b"\x00TODO binary")
    outcome = await use("search_files", workspace, pattern="TODO|return")
    assert outcome.text.splitlines() == [
        "README.md:2: TODO: write docs",
        "src/app.py:2:     return 42",
    ]
    secret = await use("search_files", workspace, pattern="secret")
    assert secret.text == "[no matches]"
    literal = await use("search_files", workspace, pattern="main(", glob="*.py")
    assert literal.text == "src/app.py:1: def main():"


async def test_search_results_are_bounded(workspace: Path) -> None:
    (workspace / "log.txt").write_text("match\n" * 5000)
    outcome = await use("search_files", workspace, pattern="match")
    lines = outcome.text.splitlines()
    assert len(lines) == 201
    assert "first 200 matches" in lines[-1]


async def test_write_file_creates_parents_and_keeps_the_mode(workspace: Path) -> None:
    created = await use("write_file", workspace, path="docs/guide/intro.md", content="hello")
    assert created == Outcome("return", "created docs/guide/intro.md (5 bytes)")
    assert (workspace / "docs" / "guide" / "intro.md").read_text() == "hello"
    script = workspace / "run.sh"
    script.write_text("old")
    script.chmod(0o750)
    replaced = await use("write_file", workspace, path="run.sh", content="new")
    assert replaced.text == "replaced run.sh (3 bytes)"
    assert script.read_text() == "new"
    assert stat.S_IMODE(script.stat().st_mode) == 0o750
    assert sorted(p.name for p in workspace.iterdir()) == ["README.md", "docs", "run.sh", "src"]


async def test_git_internals_are_not_written(workspace: Path) -> None:
    (workspace / ".git" / "hooks").mkdir(parents=True)
    hook = await use("write_file", workspace, path=".git/hooks/pre-commit", content="#!/bin/sh")
    assert refused(hook, "inside a .git directory")
    nested = await use("write_file", workspace, path="vendor/lib/.git/config", content="[core]")
    assert refused(nested, "inside a .git directory")
    assert list((workspace / ".git" / "hooks").iterdir()) == []
    assert not (workspace / "vendor").exists()


async def test_the_current_calls_workspace_is_used_when_none_is_given(
    workspace: Path, outside: Path
) -> None:
    call = ToolCall(
        run_id="r1",
        step="read",
        name="read_file",
        call_id="c1",
        idempotency_key="r1/read/c1",
        workspace=workspace,
    )
    with executing(call):
        inside = await use("read_file", None, path="src/app.py")
        escape = await use("read_file", None, path="../outside/secret.txt")
    assert inside.text.startswith("def main")
    assert refused(escape, "outside the workspace")
