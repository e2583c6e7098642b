"""Fake coding tools on PATH under their real names, so the built-in presets run them."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.cli.conftest import cli
from tests.cli_agents.gitrepo import make_repo

__all__ = ["cli", "fake_bin", "fake_script", "repo"]

FAKES = Path(__file__).resolve().parents[1] / "fixtures" / "fake_cli"

_WRAPPER = """#!{python}
import runpy, sys
if sys.argv[1:] == ["--version"]:
    print("{version}")
    sys.exit(0)
sys.argv[0] = {script!r}
runpy.run_path({script!r}, run_name="__main__")
"""


def fake_script(name: str) -> str:
    """The path of a fake tool in tests/fixtures/fake_cli (`hang`, `fail`, ...)."""
    return str(FAKES / f"{name}.py")


@pytest.fixture
def fake_bin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory first on PATH with `claude`, `codex`, `gemini` and `aider` stand-ins."""
    directory = tmp_path / "bin"
    directory.mkdir()
    for tool in ("claude", "codex", "gemini", "aider"):
        path = directory / tool
        script = fake_script(f"fake_{tool}")
        version = f"1.0.0-fake ({tool})"
        path.write_text(_WRAPPER.format(python=sys.executable, version=version, script=script))
        path.chmod(0o755)
    monkeypatch.setenv("PATH", f"{directory}:{Path(sys.executable).parent}:/usr/bin:/bin")
    return directory


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository with one commit."""
    return make_repo(tmp_path / "repo")
