"""A run's tool calls through the API (`GET /v1/runs/{id}/calls`, tenant-scoped) and in the
Prometheus metrics (`agentmill_tool_calls_total`, `agentmill_tool_call_seconds`)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Generator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

from fastapi import FastAPI
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from agentmill.agents.models import override_models
from agentmill.engine.engine import Engine
from agentmill.server.metrics import OTHER_TOOL, Metrics, ToolLabels
from agentmill.spec.loader import load_project_text
from agentmill.store import RunRecord, RunStatus
from tests.server.conftest import Api

TOOLS = '''
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


def broken(text: str) -> str:
    """Always fails."""
    raise ValueError(f"cannot handle {text!r}")
'''

CONFIG = """
version: 1
agents:
  worker:
    model: openai:gpt-4o
    tools: [{{function: {module}:add}}, {{function: {module}:broken}}]
workflows:
  w:
    steps:
      - {{id: work, agent: worker, prompt: "add things"}}
"""

SECRET = "sk-proj-" + "a1B2c3D4e5F6g7H8i9J0" * 2


def _script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """Turn 1: add(1, 2) and broken(<a secret>); turn 2: add(3, 4); then the answer."""
    turn = sum(isinstance(m, ModelResponse) for m in messages) + 1
    if turn == 1:
        return ModelResponse(
            parts=[
                ToolCallPart("add", {"a": 1, "b": 2}, tool_call_id="c1"),
                ToolCallPart("broken", {"text": SECRET}, tool_call_id="c2"),
            ]
        )
    if turn == 2:
        return ModelResponse(parts=[ToolCallPart("add", {"a": 3, "b": 4}, tool_call_id="c3")])
    return ModelResponse(parts=[TextPart("done")])


def _engine(api: Api) -> Engine:
    return cast(FastAPI, api.app).state.services.engine


def _metrics(api: Api) -> Metrics:
    return cast(FastAPI, api.app).state.services.metrics


@contextmanager
def _function_model() -> Generator[None]:
    model = FunctionModel(_script)
    with override_models(lambda _label: model):
        yield


async def _run_with_tools(api: Api, tmp_path: Path) -> RunRecord:
    module = f"api_tools_{uuid.uuid4().hex}"  # a module of the test's own (imports are cached)
    (tmp_path / f"{module}.py").write_text(TOOLS)
    config = tmp_path / "agentmill.yaml"
    config.write_text(CONFIG.format(module=module))
    loaded = load_project_text(config.read_text(), str(config))
    engine = _engine(api)
    with _function_model():
        run = await engine.submit(loaded.spec, "w", {}, config_path=str(config), tenant="acme")
        finished = await engine.wait(run.id)
    assert finished.status is RunStatus.SUCCEEDED, finished.error
    return finished


async def test_a_runs_calls_are_listed_in_order_with_previews_sizes_and_errors(
    api: Api, tmp_path: Path
) -> None:
    run = await _run_with_tools(api, tmp_path)

    response = await api.get(f"/v1/runs/{run.id}/calls", role="viewer")

    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    assert [(c["call_id"], c["kind"], c["status"]) for c in items] == [
        ("m1", "model", "succeeded"),
        ("t1.1", "tool", "succeeded"),
        ("t1.2", "tool", "failed"),
        ("m2", "model", "succeeded"),
        ("t2.1", "tool", "succeeded"),
        ("m3", "model", "succeeded"),
    ]
    calls = {c["call_id"]: c for c in items}
    add = calls["t1.1"]
    assert (add["step"], add["name"], add["size"], add["error"]) == ("work", "add", 1, None)
    assert json.loads(add["args"]) == {"a": 1, "b": 2}
    assert add["duration"] is not None
    assert add["duration"] >= 0
    broken = calls["t1.2"]
    assert broken["size"] is None
    assert "ValueError: cannot handle" in broken["error"]
    assert SECRET not in response.text, "a secret in the arguments or the error was shown"
    assert "[REDACTED]" in broken["args"]
    model = calls["m1"]
    assert model["args"] is None
    assert model["usage"]["requests"] == 1
    assert model["name"] == "openai:gpt-4o"


async def test_calls_filter_by_step_and_another_tenant_gets_404(api: Api, tmp_path: Path) -> None:
    run = await _run_with_tools(api, tmp_path)

    only_work = await api.get(f"/v1/runs/{run.id}/calls", params={"step": "work"})
    other_step = await api.get(f"/v1/runs/{run.id}/calls", params={"step": "nope"})
    other_tenant = await api.get(f"/v1/runs/{run.id}/calls", tenant="globex", role="admin")
    missing = await api.get("/v1/runs/no-such-run/calls")

    assert len(only_work.json()["items"]) == 6
    assert other_step.json() == {"items": []}
    assert other_tenant.status_code == 404, other_tenant.text
    assert "items" not in other_tenant.json()
    assert missing.status_code == 404


async def test_metrics_count_tool_calls_by_tool_and_outcome(api: Api, tmp_path: Path) -> None:
    await _run_with_tools(api, tmp_path)
    secret = await _metrics_key(api)

    response = await api.client.get("/metrics", headers={"Authorization": f"Bearer {secret}"})

    assert response.status_code == 200, response.text
    text = response.text
    assert 'agentmill_tool_calls_total{outcome="ok",tool="add"} 2.0' in text
    assert 'agentmill_tool_calls_total{outcome="error",tool="broken"} 1.0' in text
    registry = _metrics(api).registry
    assert registry.get_sample_value("agentmill_tool_call_seconds_count", {"tool": "add"}) == 2


async def _metrics_key(api: Api) -> str:
    from agentmill.store.keys import KeyStore, Role

    keys = KeyStore(_engine(api).store.engine)
    _, secret = await keys.create(tenant=api.settings.metrics_tenant, role=Role.ADMIN)
    return secret


def test_tool_labels_are_capped_then_counted_as_other() -> None:
    labels = ToolLabels(3)

    named = [labels.label(name) for name in ("a", "b", "c", "d", "a", "e" * 500)]

    assert named == ["a", "b", "c", OTHER_TOOL, "a", OTHER_TOOL]
    assert len(ToolLabels(5).label("x" * 500)) == 100
