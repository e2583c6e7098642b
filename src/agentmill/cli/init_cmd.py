"""`agentmill init`: scaffold a project with a working example."""

from __future__ import annotations

import shlex
from importlib import resources
from pathlib import Path

from rich.markup import escape

from agentmill.cli.exits import EXIT_OK, out
from agentmill.errors import UserError

__all__ = ["SCAFFOLD_FILES", "init_project"]

SCAFFOLD_FILES = ("agentmill.yaml", "sample.diff")


def init_project(directory: Path) -> int:
    targets = [directory / name for name in SCAFFOLD_FILES]
    existing = [str(path) for path in targets if path.exists()]
    if existing:
        raise UserError(
            f"refusing to overwrite {', '.join(existing)}: choose an empty directory "
            "(agentmill init DIR) or move the files away"
        )
    directory.mkdir(parents=True, exist_ok=True)
    scaffold = resources.files("agentmill.cli") / "scaffold"
    for name, target in zip(SCAFFOLD_FILES, targets, strict=True):
        target.write_text((scaffold / name).read_text(encoding="utf-8"), encoding="utf-8")
    config = directory / "agentmill.yaml"
    out().print(f"[green]created[/] {escape(str(config))} and {escape(str(targets[1]))}")
    config_arg, diff_arg = shlex.quote(str(config)), shlex.quote(f"diff=@{targets[1]}")
    out().print("next:")
    out().print(f"  agentmill validate {escape(config_arg)}")
    out().print(f"  agentmill run {escape(config_arg)} review --input {escape(diff_arg)}")
    return EXIT_OK
