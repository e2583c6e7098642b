"""An unexpected error in a command: a short message with an id, the exception in the log."""

from __future__ import annotations

import re
import sqlite3

from tests.cli.conftest import Cli


def test_an_unexpected_database_error_is_an_id_on_the_last_line(cli: Cli) -> None:
    assert cli.run("runs", "list").returncode == 0  # creates the store
    with sqlite3.connect(cli.cwd / ".agentmill" / "agentmill.db") as db:
        db.execute("ALTER TABLE am_runs RENAME TO am_runs_gone")
    result = cli.run("runs", "list")
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    found = re.fullmatch(
        r"error: internal error \(id ([0-9a-f]{12})\): see the agentmill log", last
    )
    assert found is not None, result.stderr
    assert "Traceback" not in result.stdout
    logged = result.stderr[: result.stderr.rindex(last)]
    assert f"unexpected error (id {found[1]})" in logged  # the log has the exception
    assert "am_runs" in logged
