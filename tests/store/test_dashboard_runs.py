"""Where a run came from (`am_runs.trigger_source`) and which agent a step called
(`am_steps.agent`), written with every new run and step checkpoint."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from agentmill.agents.models import override_models
from agentmill.engine.engine import Engine
from agentmill.store import RunRecord, RunStatus, Store, trigger_source_of
from agentmill.store.tables import runs
from tests.engine.helpers import run_yaml
from tests.fakes import ScriptedModel


def _run(run_id: str, trigger: dict[str, object] | None) -> RunRecord:
    return RunRecord(
        id=run_id, tenant="acme", workflow="w", status=RunStatus.PENDING, inputs={},
        outputs=None, error=None, snapshot={}, config_path=None, usage=None,
        created_at=time.time(), started_at=None, finished_at=None, owner=None,
        owner_pid=None, owner_host=None, heartbeat_at=None, cancel_requested=False,
        trigger=trigger,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("trigger", "source"),
    [
        (None, "cli"),
        ({"source": "api", "key": "k1"}, "api"),
        ({"source": "github", "event": "pull_request"}, "github"),
        ({"source": ""}, "cli"),
        ({"source": 3}, "cli"),
        ({"source": "x" * 50}, "x" * 20),
        ('{"source": "mcp"}', "mcp"),
        ("not json", "cli"),
    ],
)
def test_trigger_source_of(trigger: object, source: str) -> None:
    assert trigger_source_of(trigger) == source


async def test_each_new_run_stores_its_trigger_source_and_lists_filter_on_it(
    store: Store,
) -> None:
    await store.create_run(_run("r-cli", None))
    await store.create_run(_run("r-api", {"source": "api", "key": "k1"}))
    await store.create_run(_run("r-hook", {"source": "github", "delivery": "d"}))
    async with store.engine.connect() as conn:
        stored = dict((await conn.execute(sa.select(runs.c.id, runs.c.trigger_source))).all())
    assert stored == {"r-cli": "cli", "r-api": "api", "r-hook": "github"}
    api = await store.list_runs(tenant="acme", trigger_source="api")
    assert [run.id for run in api] == ["r-api"]
    assert api[0].trigger_source == "api"
    cli = await store.list_runs(tenant="acme", trigger_source="cli")
    assert [run.id for run in cli] == ["r-cli"]
    assert await store.list_runs(tenant="other", trigger_source="api") == []


PROJECT = """
version: 1
agents:
  writer: {model: "openai:gpt-4o-mini"}
  critic: {model: "openai:gpt-4o-mini"}
workflows:
  w:
    inputs: {go: {type: boolean, default: false}}
    steps:
      - {id: draft, agent: writer, prompt: "draft"}
      - {id: review, agent: critic, needs: [draft], foreach: "{{ [1, 2] }}", prompt: "r"}
      - {id: never, agent: writer, needs: [draft], when: "{{ inputs.go }}", prompt: "x"}
"""


async def test_each_step_checkpoint_names_its_agent(engine: Engine) -> None:
    with override_models(ScriptedModel().model):
        run, _ = await run_yaml(engine, PROJECT)
    assert run.status is RunStatus.SUCCEEDED
    assert run.trigger_source == "cli"
    agents = {step.key: step.agent for step in await engine.store.steps(run.id)}
    assert agents == {
        "draft": "writer",
        "review[0]": "critic",
        "review[1]": "critic",
        "never": None,  # skipped: no agent was called
    }
