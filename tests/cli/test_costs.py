"""`runs show` and `agentmill costs`: spend per step, run, workflow and tenant."""

from __future__ import annotations

import json

from tests.cli.conftest import Cli

PROJECT = """
version: 1
models:
  house: {provider: openai, base_url: "http://127.0.0.1:9/v1", name: house-model}
agents:
  known: {model: "openai:gpt-4o-mini"}
  unknown: {model: house}
workflows:
  review:
    steps:
      - {id: priced, agent: known, prompt: alpha}
      - {id: unpriced, agent: unknown, prompt: beta}
  summary:
    steps:
      - {id: only, agent: known, prompt: gamma}
"""


def test_runs_show_and_costs_report_spend_and_unknown_prices(cli: Cli) -> None:
    config = cli.cwd / "agentmill.yaml"
    config.write_text(PROJECT)
    first = cli.run("run", str(config), "review", "--json", recording=True)
    assert first.returncode == 0, first.stderr
    run = json.loads(first.stdout)
    assert run["cost"]["unpriced_calls"] == 1
    second = cli.run("run", str(config), "summary", recording=True)
    assert second.returncode == 0, second.stderr

    shown = cli.run("runs", "show", run["run_id"])
    assert shown.returncode == 0, shown.stderr
    priced_line = next(line for line in shown.stdout.splitlines() if "priced " in line)
    unpriced_line = next(line for line in shown.stdout.splitlines() if "unpriced" in line)
    assert "$0.0" in priced_line
    assert "unknown" in unpriced_line
    assert "1 call of unknown price" in shown.stderr

    totals = json.loads(cli.run("costs", "--json").stdout)
    by_workflow = {item["group"]: item for item in totals["items"]}
    assert set(by_workflow) == {"review", "summary"}
    assert by_workflow["review"]["unpriced_calls"] == 1
    assert by_workflow["summary"]["complete"] is True
    table = cli.run("costs", "--by", "tenant")
    assert table.returncode == 0, table.stderr
    assert "default" in table.stdout
    assert "unknown price" in table.stdout

    bad_window = cli.run("costs", "--since", "yesterday")
    assert bad_window.returncode == 2
    assert "--since" in bad_window.stderr
    assert "Traceback" not in bad_window.stderr
    bad_group = cli.run("costs", "--by", "model")
    assert bad_group.returncode == 2
