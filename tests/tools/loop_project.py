"""A project whose agents call tools, run through the engine with scripted models: the
harness of the loop's policy and delegation tests (tests/tools/test_loop_policies.py,
tests/tools/test_delegation.py)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, ToolReturnPart
from pydantic_ai.models import Model
from pydantic_ai.models.function import AgentInfo, FunctionModel

from agentmill.agents.models import override_models
from agentmill.engine.engine import Engine
from agentmill.spec.loader import load_project_text
from agentmill.store import CallRecord, EventRecord, RunRecord, StepRecord

__all__ = [
    "TOOLS_MODULE",
    "Finished",
    "Script",
    "Scripted",
    "executed",
    "run_project",
    "tool_returns",
    "turns",
]

TOOLS_MODULE = '''
import json
from pathlib import Path

from agentmill.agents.tools.context import current_call

LOG = Path(__file__).with_name("calls.jsonl")


def add(a: int, b: int) -> int:
    """Add two numbers."""
    call = current_call()
    with LOG.open("a") as log:
        log.write(json.dumps({"tool": "add", "a": a, "b": b, "key": call.idempotency_key}) + "\\n")
    return a + b


def fetch(name: str) -> str:
    """Read a document."""
    call = current_call()
    with LOG.open("a") as log:
        log.write(json.dumps({"tool": "fetch", "name": name, "key": call.idempotency_key}) + "\\n")
    if name == "big":
        return "x" * 5000
    if name == "secret":
        raise ValueError("cannot use api_key=sk-abcdefghijklmnopqrstuvwxyz012345")
    return f"document {name}"
'''
"""Tools that log each real execution to calls.jsonl next to the module."""

Script = Callable[[list[ModelMessage], AgentInfo], ModelResponse]


@dataclass
class Scripted:
    """A scripted model that counts the requests it answers."""

    script: Script
    name: str = "scripted"
    calls: int = 0

    def model(self) -> FunctionModel:
        def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
            self.calls += 1
            return self.script(messages, info)

        return FunctionModel(answer, model_name=self.name)


@dataclass(frozen=True)
class Finished:
    """A finished run with everything the tests look at."""

    run: RunRecord
    events: list[EventRecord]
    steps: dict[str, StepRecord]
    calls: list[CallRecord]

    def kinds(self, *kinds: str) -> list[EventRecord]:
        return [event for event in self.events if event.kind in kinds]


def turns(messages: list[ModelMessage]) -> int:
    """Model responses so far: the number of the request being answered, minus one."""
    return sum(isinstance(m, ModelResponse) for m in messages)


def tool_returns(messages: list[ModelMessage]) -> list[Any]:
    return [
        part.content
        for m in messages
        if isinstance(m, ModelRequest)
        for part in m.parts
        if isinstance(part, ToolReturnPart)
    ]


def executed(tmp_path: Path) -> list[dict[str, Any]]:
    """The tool executions the tools module logged."""
    log = tmp_path / "calls.jsonl"
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def write_project(tmp_path: Path, config: str) -> Path:
    """The tools module (a name of the test's own: Python keeps imported modules) and the
    config, whose `{module}` names it."""
    module = f"loop_tools_{uuid.uuid4().hex}"
    (tmp_path / f"{module}.py").write_text(TOOLS_MODULE)
    path = tmp_path / "agentmill.yaml"
    path.write_text(config.replace("{module}", module))
    return path


async def run_project(
    engine: Engine,
    tmp_path: Path,
    config: str,
    models: Mapping[str, Scripted | Model],
    *,
    inputs: dict[str, Any] | None = None,
    **submit: Any,
) -> Finished:
    """Run workflow `w` of `config` with each model label answered by `models[label]`."""
    path = write_project(tmp_path, config)
    loaded = load_project_text(path.read_text(), str(path))

    def resolve(label: str) -> Model:
        found = models[label]
        return found.model() if isinstance(found, Scripted) else found

    with override_models(resolve):
        started = await engine.submit(
            loaded.spec, "w", inputs or {}, config_path=str(path), **submit
        )
        events = [event async for event in engine.follow(started.id)]
    tenant = submit.get("tenant", "default")
    run = await engine.store.get_run(started.id, tenant=tenant)
    steps = {step.key: step for step in await engine.store.steps(run.id)}
    calls = await engine.store.calls(run.id)
    return Finished(run=run, events=events, steps=steps, calls=calls)
