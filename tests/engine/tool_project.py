"""A project whose agent has a tool that needs approval, and a model scripted to call it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncGenerator, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel

from agentmill.agents.models import override_models
from agentmill.engine.engine import Engine
from agentmill.spec.loader import load_project_text
from agentmill.store import DEFAULT_TENANT, EventRecord, RunRecord

TOOLS_MODULE = '''
import json
from pathlib import Path

from agentmill.agents.tools.context import current_call

LOG = Path(__file__).with_name("calls.jsonl")


def save_note(path: str, text: str) -> str:
    """Save a note to a file."""
    with LOG.open("a") as log:
        entry = {"path": path, "text": text, "key": current_call().idempotency_key}
        log.write(json.dumps(entry) + "\\n")
    return f"saved {path}"
'''

CONFIG = """
version: 1
agents:
  writer:
    model: openai:gpt-4o
    timeout: 2s
    tools:
      - function: {module}:save_note
        approve: true
workflows:
  w:
    steps:
      - {{id: work, agent: writer, prompt: "notes"}}
  two:
    steps:
      - {{id: left, agent: writer, prompt: "left"}}
      - {{id: right, agent: writer, prompt: "right"}}
  pair:
    steps:
      - {{id: work, agent: writer, prompt: "pair"}}
  gated:
    steps:
      - {{id: sign-off, approval: {{prompt: "go?"}}}}
"""


@dataclass
class Project:
    """A config with an approvable tool, and the log of the tool's executions."""

    dir: Path
    text: str
    model_turns: list[str]
    """The step of each model request the script answered (`<prompt> <turn>`)."""

    def executed(self) -> list[dict[str, Any]]:
        log = self.dir / "calls.jsonl"
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines()]

    async def submit(
        self, engine: Engine, workflow: str = "w", *, tenant: str = DEFAULT_TENANT
    ) -> RunRecord:
        config = self.dir / "agentmill.yaml"
        spec = load_project_text(self.text, str(config)).spec
        return await engine.submit(spec, workflow, {}, config_path=str(config), tenant=tenant)


def tool_project(tmp_path: Path) -> Project:
    # A module name of the test's own: Python keeps an imported module for the process.
    module = f"note_tools_{uuid.uuid4().hex}"
    (tmp_path / f"{module}.py").write_text(TOOLS_MODULE)
    text = CONFIG.format(module=module)
    (tmp_path / "agentmill.yaml").write_text(text)
    return Project(dir=tmp_path, text=text, model_turns=[])


def _prompt(messages: list[ModelMessage]) -> str:
    first = messages[0]
    assert isinstance(first, ModelRequest)
    return next(str(p.content) for p in first.parts if isinstance(p, UserPromptPart))


def _tool_results(messages: list[ModelMessage]) -> list[str]:
    return [
        str(part.content)
        for m in messages
        if isinstance(m, ModelRequest)
        for part in m.parts
        if isinstance(part, ToolReturnPart)
    ]


@contextlib.contextmanager
def scripted(project: Project) -> Generator[None]:
    """The model asks once to save `<prompt>.md` (saying why; with the prompt `pair`, two
    calls in one response: `a.md` and `b.md`), then reports what it got."""

    def script(messages: list[ModelMessage], _info: AgentInfo) -> ModelResponse:
        prompt = _prompt(messages)
        turn = sum(isinstance(m, ModelResponse) for m in messages) + 1
        project.model_turns.append(f"{prompt} {turn}")
        if turn == 1:
            paths = ["a.md", "b.md"] if prompt == "pair" else [f"{prompt}.md"]
            calls = [
                ToolCallPart("save_note", {"path": path, "text": "hello"}, tool_call_id=f"c{n}")
                for n, path in enumerate(paths, 1)
            ]
            return ModelResponse(parts=[TextPart(f"I keep the {prompt} notes."), *calls])
        return ModelResponse(parts=[TextPart(f"got {_tool_results(messages)}")])

    model = FunctionModel(script)
    with override_models(lambda _label: model):
        yield


async def requested(engine: Engine, run_id: str, gate: str, *, after: int = 0) -> EventRecord:
    """The `approval_requested` event of a tool gate, waiting for it."""
    follow = cast(AsyncGenerator[EventRecord], engine.follow(run_id, after=after))
    async with asyncio.timeout(30), contextlib.aclosing(follow) as events:
        async for event in events:
            if event.kind == "approval_requested" and event.data.get("gate") == gate:
                return event
    raise AssertionError(f"the run ended without asking to approve {gate}")
