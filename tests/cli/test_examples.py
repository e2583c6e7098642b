"""The shipped example and the `init` scaffold are the same, and they validate."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentmill.cli.init_cmd import SCAFFOLD_FILES
from agentmill.engine.project import load_checked

ROOT = Path(__file__).resolve().parents[2]
SCAFFOLD = ROOT / "src" / "agentmill" / "cli" / "scaffold"
EXAMPLES = {"agentmill.yaml": "code-review.yaml", "sample.diff": "sample.diff"}


@pytest.mark.parametrize("name", SCAFFOLD_FILES)
def test_examples_match_the_init_scaffold(name: str) -> None:
    example = ROOT / "examples" / EXAMPLES[name]
    assert example.read_text() == (SCAFFOLD / name).read_text()


def test_the_example_validates_with_the_local_model() -> None:
    loaded = load_checked(ROOT / "examples" / "code-review.yaml")
    assert set(loaded.spec.workflows) == {"review", "triage"}
    assert loaded.spec.models["default"] == "local:smollm2"
