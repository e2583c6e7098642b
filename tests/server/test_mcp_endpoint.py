"""`/mcp` of a real `agentmill serve` process, driven by the real `mcp` streamable-HTTP client.

The server is the real CLI with every model scripted (`tests/fixtures/scripted_serve.py`:
answers `done <prompt>`). Keys are made with `agentmill keys create` for two tenants and
two roles; the endpoint must apply them exactly as the REST API does.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncGenerator, Generator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError

from tests.servers import free_port, wait_ready

ROOT = Path(__file__).resolve().parents[2]
SCRIPTED_SERVE = ROOT / "tests" / "fixtures" / "scripted_serve.py"
_SERVE = [sys.executable, str(SCRIPTED_SERVE), "serve"]

CONFIG = """
version: 1
models: {default: openai:gpt-4o}
agents:
  writer: {instructions: be brief}
workflows:
  echo:
    description: Draft a text about a topic
    inputs:
      topic: {type: string}
      tags: {type: list, default: []}
    steps:
      - {id: draft, agent: writer, prompt: "draft {{ inputs.topic }} {{ inputs.tags | length }}"}
  held:
    steps:
      - {id: wait, agent: writer, prompt: "hold shutdown"}
"""


@dataclass
class Served:
    url: str
    keys: dict[tuple[str, str], str]
    home: Path
    env: dict[str, str]

    @property
    def mcp_url(self) -> str:
        return f"{self.url}/mcp"

    def key(self, tenant: str = "acme", role: str = "operator") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[(tenant, role)]}"}


def _create_key(home: Path, env: dict[str, str], tenant: str, role: str) -> str:
    created = subprocess.run(
        [sys.executable, "-m", "agentmill", "keys", "create", "--tenant", tenant, "--role", role],
        cwd=home,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert created.returncode == 0, created.stderr
    return created.stdout.strip()


@dataclass
class _Process:
    popen: subprocess.Popen[str] | None = None


@contextlib.contextmanager
def _serving(
    home: Path, keys_for: list[tuple[str, str]], proc: _Process, **extra_env: str
) -> Generator[Served]:
    """A real `agentmill serve` of CONFIG in `home`, with a key per (tenant, role)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTMILL_")}
    env |= {
        "AGENTMILL_HOME": str(home / ".agentmill"),
        "AGENTMILL_TEST_CALL_LOG": str(home / "calls.log"),
        "PYTHONPATH": str(ROOT),
        **extra_env,
    }
    (home / "agentmill.yaml").write_text(CONFIG)
    keys = {(tenant, role): _create_key(home, env, tenant, role) for tenant, role in keys_for}
    port = free_port()
    process = subprocess.Popen(
        [*_SERVE, "--config", "agentmill.yaml", "--port", str(port), "--workers", "2"],
        cwd=home,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    proc.popen = process
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(process, url)
        yield Served(url=url, keys=keys, home=home, env=env)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        assert process.stderr is not None
        print(process.stderr.read())  # shown by pytest when a test fails
        process.stderr.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    home = tmp_path_factory.mktemp("mcp-serve")
    keys_for = [("acme", "operator"), ("acme", "viewer"), ("globex", "operator")]
    with _serving(home, keys_for, _Process()) as found:
        yield found


@asynccontextmanager
async def _session(served: Served, headers: dict[str, str]) -> AsyncGenerator[ClientSession]:
    async with (
        create_mcp_http_client(headers=headers) as http,
        streamable_http_client(served.mcp_url, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        with anyio.fail_after(60):
            await session.initialize()
        yield session


async def test_lists_the_workflows_as_tools_with_their_schemas(served: Served) -> None:
    async with _session(served, served.key(role="viewer")) as session:
        tools = (await session.list_tools()).tools
    assert [tool.name for tool in tools] == ["echo", "held"]
    assert tools[0].description == "Draft a text about a topic"
    assert tools[0].input_schema == {
        "type": "object",
        "properties": {"topic": {"type": "string"}, "tags": {"type": "array", "default": []}},
        "required": ["topic"],
        "additionalProperties": False,
    }


async def test_a_call_runs_the_workflow_in_the_keys_tenant(served: Served) -> None:
    async with _session(served, served.key()) as session:
        result = await session.call_tool("echo", {"topic": "otters", "tags": ["a", "b"]})
    assert not result.is_error, result.content
    structured: dict[str, Any] = result.structured_content
    assert structured["outputs"] == {"draft": "done draft otters 2"}
    run_id = structured["run_id"]
    async with httpx.AsyncClient(base_url=served.url) as client:
        mine = await client.get(f"/v1/runs/{run_id}", headers=served.key())
        theirs = await client.get(f"/v1/runs/{run_id}", headers=served.key("globex"))
        listed = await client.get("/v1/runs", headers=served.key("globex"))
    assert mine.status_code == 200
    assert mine.json()["trigger"] == {"source": "mcp", "key": mine.json()["trigger"]["key"]}
    assert theirs.status_code == 404
    assert run_id not in {run["id"] for run in listed.json()["items"]}


async def test_another_tenant_cannot_read_the_run_over_mcp(served: Served) -> None:
    async with _session(served, served.key()) as session:
        result = await session.call_tool("echo", {"topic": "secret plans"})
        run_id = result.structured_content["run_id"]
        read = await session.read_resource(f"agentmill://runs/{run_id}")
    assert json.loads(read.contents[0].text)["status"] == "succeeded"  # type: ignore[union-attr]
    async with _session(served, served.key("globex")) as other:
        with pytest.raises(MCPError, match="no run"):
            await other.read_resource(f"agentmill://runs/{run_id}")


async def test_bad_inputs_are_a_tool_error(served: Served) -> None:
    async with _session(served, served.key()) as session:
        result = await session.call_tool("echo", {"topic": 3, "tags": "not json"})
    assert result.is_error
    message: str = result.content[0].text  # type: ignore[union-attr]
    assert "input 'topic' must be a string, got 3" in message
    assert "input 'tags' must be a list in JSON" in message


async def test_a_viewer_can_list_but_not_call(served: Served) -> None:
    before = _calls(served)
    async with _session(served, served.key(role="viewer")) as session:
        assert [tool.name for tool in (await session.list_tools()).tools] == ["echo", "held"]
        result = await session.call_tool("echo", {"topic": "viewer run"})
    assert result.is_error
    assert "viewer role; running a workflow needs operator" in result.content[0].text  # type: ignore[union-attr]
    assert _calls(served) == before


async def test_no_or_an_invalid_key_is_refused_with_401(served: Served) -> None:
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        },
    }
    accept = {"Accept": "application/json, text/event-stream"}
    async with httpx.AsyncClient(base_url=served.url) as client:
        missing = await client.post("/mcp", json=initialize, headers=accept)
        invalid = await client.post(
            "/mcp", json=initialize, headers=accept | {"Authorization": "Bearer amk_nope"}
        )
        valid = await client.post("/mcp", json=initialize, headers=accept | served.key())
    for refused in (missing, invalid):
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"] == "Bearer"
        assert refused.json()["detail"].startswith("a valid API key is required")
    assert valid.status_code == 200
    # The client reports the refusal from its transport's task group: nested groups.
    refused_by_client = pytest.RaisesGroup(
        pytest.RaisesGroup(pytest.RaisesExc(MCPError, match="error response"))
    )
    with anyio.fail_after(60), refused_by_client:
        await _initialize(served, {"Authorization": "Bearer amk_nope"})


async def _initialize(served: Served, headers: dict[str, str]) -> None:
    async with _session(served, headers):
        pass


def _calls(served: Served) -> list[str]:
    log = served.home / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


async def test_a_call_waiting_on_its_run_answers_when_the_server_stops(tmp_path: Path) -> None:
    """SIGTERM: the waiting call answers with the run id at once (the run is left to the
    next worker) instead of holding the server's graceful shutdown open."""
    proc = _Process()
    answers: list[Any] = []
    # A short grace: the held step never finishes, the server interrupts it after that.
    grace = {"AGENTMILL_SHUTDOWN_GRACE": "0.5"}
    with _serving(tmp_path, [("acme", "operator")], proc, **grace) as served:
        async with _session(served, served.key()) as session, anyio.create_task_group() as tg:
            # Listed first: the client checks a result against the tool's output schema,
            # and would otherwise list the tools after the answer, from a stopped server.
            await session.list_tools()

            async def call() -> None:
                answers.append(await session.call_tool("held", {}))

            tg.start_soon(call)
            with anyio.fail_after(60):
                while "start hold shutdown" not in _calls(served):
                    await anyio.sleep(0.02)
            assert proc.popen is not None
            proc.popen.send_signal(signal.SIGTERM)
        result = answers[0]
        assert proc.popen is not None
        assert not result.is_error, result.content
        assert result.structured_content["status"] == "running"
        assert result.structured_content["run_id"]
        assert proc.popen.wait(timeout=60) == 0
