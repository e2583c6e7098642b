"""Budgets as users meet them: the CLI (messages, --budget-*, keys, crashes), the API, the docs."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentmill.engine.engine import Engine
from agentmill.errors import BudgetExceeded
from agentmill.server.app import create_app
from agentmill.settings import Settings
from agentmill.spec.loader import load_project_text
from agentmill.spec.models import BudgetSpec
from agentmill.store import RunRecord, RunStatus, StepRecord, StepStatus, Store
from agentmill.store.budgets import BudgetStore, Hold, HoldStatus, LedgerEntry
from agentmill.store.keys import KeyStore, Role
from tests.cli.conftest import Cli
from tests.fakes import ScriptedModel
from tests.policy.test_budget import (
    config,
    scripted,
    tokens_of,
)

__all__ = ["scripted"]  # the fixture, shared with test_budget

# the CLI: messages, --budget-*, keys, and crashes


def cli_database(cli: Cli) -> str:
    settings = Settings(
        home=Path(cli.env["AGENTMILL_HOME"]), database_url=cli.env.get("AGENTMILL_DATABASE_URL")
    )
    return settings.resolved_database_url


async def cli_budgets(cli: Cli, run_id: str) -> tuple[list[Hold], LedgerEntry | None]:
    store = await Store.open(cli_database(cli))
    try:
        found = BudgetStore(store.sync_engine)
        return await found.holds(run_id), await found.entry(f"run:{run_id}")
    finally:
        await store.close()


async def cli_steps(cli: Cli, run_id: str) -> list[StepRecord]:
    store = await Store.open(cli_database(cli))
    try:
        return await store.steps(run_id)
    finally:
        await store.close()


def only_run_id(cli: Cli) -> str:
    listed = cli.run("runs", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    (found,) = json.loads(listed.stdout)
    return str(found["run_id"])


def test_agentmill_run_prints_the_budget_error_without_a_traceback(cli: Cli) -> None:
    path = cli.cwd / "agentmill.yaml"
    path.write_text(config(workflow_budget="{tokens: 10}"))
    result = cli.run("run", str(path), "w", recording=True)
    assert result.returncode == 1, result.stderr
    assert "budget exceeded: workflow 'w' per-run budget allows 10 tokens, 0 tokens spent" in (
        " ".join(result.stderr.split())
    )
    assert "Traceback" not in result.stderr
    assert cli.calls() == []

    # --budget-usd / --budget-tokens replace the workflow's budget for this run.
    path.write_text(config())
    result = cli.run("run", str(path), "w", "--budget-tokens", "20", "--json", recording=True)
    assert result.returncode == 1, result.stderr
    shown = json.loads(result.stdout)
    assert f"run {shown['run_id']} budget (given at start) allows 20 tokens" in shown["error"]
    result = cli.run("run", str(path), "w", "--budget-usd", "1", "--json", recording=True)
    assert result.returncode == 0, result.stderr
    for bad in ("0", "nan", "inf"):
        result = cli.run("run", str(path), "w", "--budget-usd", bad, recording=True)
        assert result.returncode == 2
        assert "--budget-usd must be a number more than 0" in result.stderr
        assert "Traceback" not in result.stderr


def test_keys_create_with_budgets_and_change_them(cli: Cli) -> None:
    created = cli.run(
        "keys", "create", "--tenant", "acme", "--daily-usd", "5", "--monthly-usd", "100",
        "--daily-tokens", "200000",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    listed = json.loads(cli.run("keys", "list", "--json").stdout)
    (key,) = listed
    assert key["budget"] == {"day": {"usd": 5.0, "tokens": 200000}, "month": {"usd": 100.0}}
    table = cli.run("keys", "list").stdout
    assert "$5 daily, 200,000 tokens daily, $100 monthly" in " ".join(table.split())

    changed = cli.run("keys", "budget", key["id"], "--monthly-tokens", "1000")
    assert changed.returncode == 0, changed.stderr
    assert "1,000 tokens monthly" in changed.stderr
    (key,) = json.loads(cli.run("keys", "list", "--json").stdout)
    assert key["budget"] == {"month": {"tokens": 1000}}
    assert cli.run("keys", "budget", key["id"]).returncode == 0
    (key,) = json.loads(cli.run("keys", "list", "--json").stdout)
    assert key["budget"] is None

    for bad in ("-1", "nan"):
        refused = cli.run("keys", "create", "--daily-usd", bad)
        assert refused.returncode == 2
        assert "a budget limit must be a number more than 0" in refused.stderr


CHAIN = (
    '      - {id: s1, agent: a, prompt: "s1"}\n'
    '      - {id: s2, agent: a, needs: [s1], prompt: "s2"}\n'
    '      - {id: s3, agent: a, needs: [s2], prompt: "s3"}'
)


def _kill_during_s2(cli: Cli) -> str:
    cli.env["AGENTMILL_TEST_LATENCY"] = "1.0"
    path = cli.cwd / "agentmill.yaml"
    path.write_text(config(workflow_budget="{tokens: 100000}", steps=CHAIN))
    process = cli.start("run", str(path), "w", recording=True)
    deadline = time.monotonic() + 60
    while cli.calls() != ["s1", "s2"]:  # s2's hold is committed before its model call
        assert time.monotonic() < deadline, cli.calls()
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)
    return only_run_id(cli)


async def test_resume_after_kill_9_mid_call_charges_every_call_once(any_backend_cli: Cli) -> None:
    cli = any_backend_cli
    run_id = _kill_during_s2(cli)
    holds, _ = await cli_budgets(cli, run_id)
    states = {h.call_key: h.status for h in holds}
    assert states == {"s1": HoldStatus.SETTLED, "s2": HoldStatus.HELD}

    resumed = await asyncio.to_thread(cli.run, "runs", "resume", run_id, "--json", recording=True)
    assert resumed.returncode == 0, resumed.stderr
    assert cli.calls() == ["s1", "s2", "s2", "s3"]  # s1 succeeded before: not called again

    holds, entry = await cli_budgets(cli, run_id)
    by_status = sorted((h.call_key, h.status) for h in holds)
    assert by_status == [
        ("s1", HoldStatus.SETTLED),
        ("s2", HoldStatus.RELEASED),  # the crashed attempt: released, charged nothing
        ("s2", HoldStatus.SETTLED),
        ("s3", HoldStatus.SETTLED),
    ]
    steps = await cli_steps(cli, run_id)
    assert entry is not None
    assert entry.reserved_tokens == 0
    assert entry.spent_tokens == sum(tokens_of(s) for s in steps)


async def test_cancelling_a_run_whose_process_died_releases_its_holds(any_backend_cli: Cli) -> None:
    cli = any_backend_cli
    run_id = _kill_during_s2(cli)
    cancelled = await asyncio.to_thread(cli.run, "runs", "cancel", run_id)
    assert cancelled.returncode == 0, cancelled.stderr
    holds, entry = await cli_budgets(cli, run_id)
    assert sorted((h.call_key, h.status) for h in holds) == [
        ("s1", HoldStatus.SETTLED),
        ("s2", HoldStatus.RELEASED),
    ]
    (s1,) = [s for s in await cli_steps(cli, run_id) if s.status is StepStatus.SUCCEEDED]
    assert entry is not None
    assert (entry.spent_tokens, entry.reserved_tokens) == (tokens_of(s1), 0)


# the API


@pytest.fixture
async def api(isolated_settings: Settings, scripted: ScriptedModel) -> AsyncIterator[Api]:
    settings = isolated_settings.model_copy(update={"rate_limit": 1000.0, "rate_burst": 1000})
    project = load_project_text(config(), "agentmill.yaml")
    app = create_app(settings, project=project, workers=2)
    async with app.router.lifespan_context(app):
        engine: Engine = app.state.services.engine
        keys = KeyStore(engine.store.engine)
        _, admin = await keys.create(tenant="acme", role=Role.ADMIN)
        _, other = await keys.create(tenant="globex", role=Role.ADMIN)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield Api(client=client, engine=engine, admin=admin, other=other)


@dataclass
class Api:
    client: httpx.AsyncClient
    engine: Engine
    admin: str
    other: str

    def auth(self, secret: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {secret}"}

    async def start(self, secret: str, **body: Any) -> RunRecord:
        response = await self.client.post(
            "/v1/runs", json={"workflow": "w", **body}, headers=self.auth(secret)
        )
        assert response.status_code == 201, response.text
        run_id = response.json()["id"]
        await asyncio.wait_for(self.engine.wait(run_id), 30)
        return await self.engine.store.get_run(run_id, tenant="acme")


async def test_api_run_budget_and_key_budgets(api: Api) -> None:
    refused = await api.start(api.admin, budget={"tokens": 20})
    assert refused.status is RunStatus.FAILED
    assert refused.error is not None
    assert f"run {refused.id} budget (given at start) allows 20 tokens" in refused.error
    assert refused.api_key_id is not None
    shown = await api.client.get(f"/v1/runs/{refused.id}", headers=api.auth(api.admin))
    assert "budget exceeded" in shown.json()["steps"][0]["error"]

    for path, budget in (
        ("/v1/runs", {"usd": -1}),
        ("/v1/runs", {"tokens": 2**70}),
        ("/v1/runs", {"usd": float("inf")}),
        ("/v1/keys", {"day": {"usd": float("inf")}}),
    ):
        body = {"workflow": "w"} if path == "/v1/runs" else {"role": "operator"}
        # Infinity is not JSON; 1e400 is, and parses to infinity.
        content = json.dumps({**body, "budget": budget}).replace("Infinity", "1e400")
        bad = await api.client.post(
            path,
            content=content,
            headers={**api.auth(api.admin), "content-type": "application/json"},
        )
        assert bad.status_code == 422, (path, budget, bad.text)
        assert bad.headers["content-type"].startswith("application/problem+json")

    created = await api.client.post(
        "/v1/keys",
        json={"role": "operator", "budget": {"day": {"tokens": 30}}},
        headers=api.auth(api.admin),
    )
    assert created.status_code == 201, created.text
    key = created.json()
    assert key["budget"] == {"day": {"usd": None, "tokens": 30}, "month": None}
    limited = await api.start(key["secret"])
    assert limited.error is not None
    assert f"API key {key['id']} daily budget allows 30 tokens" in limited.error

    path = f"/v1/keys/{key['id']}/budget"
    changed = await api.client.put(
        path, json={"budget": {"month": {"usd": 5}}}, headers=api.auth(api.admin)
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["budget"]["month"]["usd"] == 5
    allowed = await api.start(key["secret"])
    assert allowed.status is RunStatus.SUCCEEDED, allowed.error

    elsewhere = await api.client.put(path, json={"budget": None}, headers=api.auth(api.other))
    assert elsewhere.status_code == 404
    listed = await api.client.get("/v1/keys", headers=api.auth(api.admin))
    assert {k["id"]: k["budget"] for k in listed.json()["items"]}[key["id"]] is not None


# docs/budgets.md


def doc_block(name: str) -> str:
    """The fenced block that follows `<!-- test: name -->` in docs/budgets.md."""
    doc = (Path(__file__).parents[2] / "docs" / "budgets.md").read_text()
    match = re.search(rf"<!-- test: {name} -->\n```\w*\n(.*?)```", doc, re.DOTALL)
    assert match is not None, f"no block {name!r} in docs/budgets.md"
    return match.group(1)


def test_the_documented_example_loads_and_the_documented_error_is_real() -> None:
    spec = load_project_text(doc_block("budgets-example"), "agentmill.yaml").spec
    assert spec.workflows["review"].budget == BudgetSpec(usd=2.0, tokens=200000)
    assert spec.agents["reviewer"].budget == BudgetSpec(usd=0.5)
    acme = spec.budgets.tenants["acme"]
    assert acme.day == BudgetSpec(usd=5)
    assert acme.month == BudgetSpec(usd=100)
    error = BudgetExceeded(
        level="workflow 'review' per-run budget",
        unit="tokens",
        limit=200000,
        spent=199100,
        reserved=0,
        needed=1139,
    )
    assert str(error) == doc_block("budget-error").strip()
