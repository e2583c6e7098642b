"""`agentmill cache stats | clear` and cached runs through the real CLI, in subprocesses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.cli.conftest import Cli, _base_env

SECRET = "0123456789abcdef" * 4

CONFIG = """
version: 1
agents:
  writer:
    model: openai:gpt-4o
    cache: {ttl: 1h}
workflows:
  w:
    inputs: {topic: {type: string}}
    steps:
      - {id: a, agent: writer, prompt: "write about {{ inputs.topic }}"}
"""


def _cli(tmp_path: Path) -> Cli:
    env = _base_env(tmp_path)
    env["AGENTMILL_TEST_LATENCY"] = "0"
    env["AGENTMILL_CACHE_SECRET"] = SECRET
    (tmp_path / "agentmill.yaml").write_text(CONFIG)
    return Cli(cwd=tmp_path, env=env)


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return _cli(tmp_path)


def _stats(cli: Cli, *args: str) -> list[dict[str, Any]]:
    result = cli.run("cache", "stats", "--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_cached_runs_then_stats_and_clear(cli: Cli) -> None:
    """The commands over SQLite; the cache store itself is tested on both databases."""
    for topic in ("tea", "tea", "coffee"):
        result = cli.run("run", "agentmill.yaml", "w", "-i", f"topic={topic}", recording=True)
        assert result.returncode == 0, result.stderr
    assert cli.calls() == ["write about tea", "write about coffee"]
    # Counters of each process are written when it exits.
    [stats] = _stats(cli)
    assert stats["tenant"] == "default"
    assert (stats["hits"], stats["misses"], stats["sets"]) == (1, 2, 2)
    assert (stats["entries"], stats["integrity_failures"]) == (2, 0)
    assert stats["bytes"] > 0

    table = cli.run("cache", "stats")
    assert table.returncode == 0, table.stderr
    assert "default" in table.stdout
    assert "tampered" in table.stdout
    assert "33%" in table.stdout  # hit rate

    assert _stats(cli, "--tenant", "nobody") == []
    nobody = cli.run("cache", "stats", "--tenant", "nobody")
    assert "no cache activity for tenant 'nobody'" in nobody.stdout

    expired = cli.run("cache", "clear", "--expired-only")
    assert expired.returncode == 0, expired.stderr
    assert "removed 0 expired entries" in expired.stderr
    other = cli.run("cache", "clear", "--tenant", "acme")
    assert "removed 0 entries of tenant 'acme'" in other.stderr
    cleared = cli.run("cache", "clear", "--tenant", "default")
    assert cleared.returncode == 0, cleared.stderr
    assert "removed 2 entries of tenant 'default'" in cleared.stderr
    [after] = _stats(cli)
    assert (after["entries"], after["hits"], after["sets"]) == (0, 1, 2)  # counters kept

    again = cli.run("run", "agentmill.yaml", "w", "-i", "topic=tea", recording=True)
    assert again.returncode == 0, again.stderr
    assert cli.calls()[-1] == "write about tea"  # cleared: the model answers again


def test_a_cached_run_without_a_secret_exits_2_saying_how_to_make_one(cli: Cli) -> None:
    del cli.env["AGENTMILL_CACHE_SECRET"]
    result = cli.run("run", "agentmill.yaml", "w", "-i", "topic=tea", recording=True)
    assert result.returncode == 2
    assert "AGENTMILL_CACHE_SECRET" in result.stderr
    assert "secrets.token_hex(32)" in result.stderr
    assert "Traceback" not in result.stderr
    assert cli.calls() == []


def test_cache_commands_report_a_bad_database_url_without_a_traceback(cli: Cli) -> None:
    cli.env["AGENTMILL_DATABASE_URL"] = "mysql://nobody@localhost/db"
    for args in (("stats",), ("clear",)):
        result = cli.run("cache", *args)
        assert result.returncode == 2
        assert "AGENTMILL_DATABASE_URL" in result.stderr
        assert "Traceback" not in result.stderr
