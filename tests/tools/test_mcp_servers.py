"""MCP servers as toolsets, against real servers from the registries: mcp-server-time and
mcp-server-git (PyPI) over stdio, @modelcontextprotocol/server-everything (npm, installed by
`make test` under .venv/mcp-node) over stdio and streamable HTTP. Tool calls are made the way
a model makes them: a pydantic-ai `Agent` driven by a `FunctionModel` script."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from pydantic_ai import Agent
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.toolsets import AbstractToolset

from agentmill.agents.tools.context import ToolCall, executing
from agentmill.agents.tools.mcp import (
    McpServerError,
    list_server_tools,
    mcp_toolset,
    send_idempotency_key,
)
from agentmill.errors import ConfigError, MissingCredentialError, MissingDependencyError

EVERYTHING = (
    Path(sys.prefix) / "mcp-node/node_modules/@modelcontextprotocol/server-everything/dist/index.js"
)
BASE_ENV = {key: os.environ[key] for key in ("PATH", "HOME") if key in os.environ}
TOKEN = "tok-8f3a-not-a-real-secret"
SDK_DEFAULTS = ("LOGNAME", "SHELL", "TERM", "USER")

# A server of our own for the one thing no registry server shows: the `_meta` a call carries.
META_ECHO_SERVER = """
import json
from mcp.server.mcpserver import Context, MCPServer

server = MCPServer("meta-echo")

@server.tool()
def show_meta(ctx: Context) -> str:
    \"\"\"The request's _meta, as JSON.\"\"\"
    params = ctx.request_context.params or {}
    return json.dumps(params.get("_meta") or {}, default=str)

server.run()
"""


def _everything() -> list[str]:
    """The argv of server-everything over stdio; skips when Node or the package is absent."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js is not installed: the npm MCP servers cannot run")
    if not EVERYTHING.is_file():
        reason = (
            f"server-everything is not installed under {EVERYTHING.parents[4]}: "
            "`make test` installs it with npm"
        )
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return [node, str(EVERYTHING)]


def _toolset(
    name: str,
    *,
    command: list[str] | None = None,
    url: str | None = None,
    env_names: Sequence[str] = (),
    headers: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    prefix: str | None = None,
    timeout: float = 30.0,
) -> AbstractToolset[Any]:
    return mcp_toolset(
        name,
        command=command,
        url=url,
        env_names=env_names,
        headers=headers or {},
        cwd=Path.cwd(),
        timeout=timeout,
        include=include,
        exclude=exclude,
        prefix=prefix,
        environ=BASE_ENV if environ is None else environ,
    )


async def _list(name: str, **where: Any) -> list[str]:
    options: dict[str, Any] = {"command": None, "url": None, "headers": {}, "environ": BASE_ENV}
    options |= where
    tools = await list_server_tools(name, env_names=[], cwd=Path.cwd(), **options)
    return [tool.name for tool in tools]


@dataclass
class Seen:
    """What the scripted model was offered and what came back for each call id."""

    tools: list[str] = field(default_factory=list[str])
    results: dict[str, tuple[str, str]] = field(default_factory=dict[str, tuple[str, str]])
    """call id -> ("return" | "retry", the text the model saw)."""


async def _run(toolset: AbstractToolset[Any], *turns: list[ToolCallPart]) -> Seen:
    """An agent run whose model makes the calls of each turn in order, then answers."""
    seen = Seen()

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        seen.tools = seen.tools or sorted(tool.name for tool in info.function_tools)
        last = messages[-1]
        assert isinstance(last, ModelRequest)
        _collect(last, seen.results)
        turn = sum(isinstance(message, ModelResponse) for message in messages)
        if turn < len(turns):
            return ModelResponse(parts=list(turns[turn]))
        return ModelResponse(parts=[TextPart("done")])

    await Agent(FunctionModel(model), toolsets=[toolset], retries=3).run("go")
    return seen


def _collect(request: ModelRequest, results: dict[str, tuple[str, str]]) -> None:
    for part in request.parts:
        if isinstance(part, ToolReturnPart):
            kind = "return" if part.outcome == "success" else "retry"
            results[part.tool_call_id] = (kind, part.model_response_str(wrap_if_error=False))


def _call(name: str, call_id: str, **args: Any) -> ToolCallPart:
    return ToolCallPart(name, args, tool_call_id=call_id)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --- stdio servers from PyPI ------------------------------------------------------------


async def test_the_time_server_answers_a_call_made_by_the_model() -> None:
    toolset = _toolset("time", command=[sys.executable, "-m", "mcp_server_time"])

    seen = await _run(toolset, [_call("get_current_time", "t1", timezone="UTC")])

    assert seen.tools == ["convert_time", "get_current_time"]
    kind, text = seen.results["t1"]
    assert kind == "return"
    answer = json.loads(text)
    assert answer["timezone"] == "UTC"
    assert answer["datetime"].endswith("+00:00")


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "README.md").write_text("hello\n")
    identity = ["-c", "user.name=Test", "-c", "user.email=test@example.com"]
    for argv in (
        ["init", "-q"],
        ["add", "README.md"],
        [*identity, "commit", "-qm", "first commit"],
    ):
        subprocess.run(["git", *argv], cwd=repo, check=True)
    (repo / "README.md").write_text("hello again\n")
    return repo


async def test_the_git_server_narrowed_and_prefixed_reads_a_repository(repository: Path) -> None:
    command = [sys.executable, "-m", "mcp_server_git", "--repository", str(repository)]
    toolset = _toolset(
        "git",
        command=command,
        include=["git_status", "git_log", "git_diff*"],
        exclude=["git_diff_staged"],
        prefix="repo_",
    )
    where = {"repo_path": str(repository)}

    # Two calls in one turn: pydantic-ai runs them in parallel over the one connection.
    seen = await _run(
        toolset, [_call("repo_git_status", "s", **where), _call("repo_git_log", "l", **where)]
    )

    assert seen.tools == [
        "repo_git_diff",
        "repo_git_diff_unstaged",
        "repo_git_log",
        "repo_git_status",
    ]
    assert seen.results["s"][0] == "return"
    assert "modified:   README.md" in seen.results["s"][1]
    assert "Message: first commit" in seen.results["l"][1]


# --- server-everything (npm) --------------------------------------------------------------


async def test_a_stdio_server_sees_only_the_allowlisted_environment(
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    command = _everything()
    monkeypatch.setenv("AM_PARENT_SECRET", "parent-secret-value")
    environ = {**os.environ, "AM_LISTED": "listed-value", "AM_UNLISTED": "unlisted-value"}
    caplog.set_level(logging.DEBUG, logger="agentmill.tools.mcp")
    toolset = _toolset("everything", command=command, env_names=["AM_LISTED"], environ=environ)

    seen = await _run(toolset, [_call("get-env", "env"), _call("echo", "echo", message="hi")])

    server_env = json.loads(seen.results["env"][1])
    assert server_env["AM_LISTED"] == "listed-value"
    assert "AM_UNLISTED" not in server_env
    assert "AM_PARENT_SECRET" not in server_env
    assert server_env["PATH"] == os.environ["PATH"]
    # Nothing else: the MCP client itself adds only these harmless ones.
    assert set(server_env) <= {"PATH", "HOME", "LANG", "AM_LISTED", *SDK_DEFAULTS}
    assert seen.results["echo"] == ("return", "Echo: hi")
    # The server's stderr went to the debug log, not onto the terminal.
    assert "Starting default (STDIO) server" not in capfd.readouterr().err
    assert "Starting default (STDIO) server" in caplog.text


async def test_tool_errors_and_timeouts_go_back_to_the_model() -> None:
    toolset = _toolset("everything", command=_everything(), timeout=1)

    seen = await _run(
        toolset,
        [_call("get-sum", "bad", a="x", b=1)],
        [_call("trigger-long-running-operation", "slow", duration=5, steps=5)],
        [_call("echo", "after", message="still here")],
    )

    kind, text = seen.results["bad"]
    assert kind == "retry"
    assert "expected number" in text
    assert seen.results["slow"] == (
        "retry",
        "trigger-long-running-operation did not answer within 1s (the limit per call)",
    )
    assert seen.results["after"] == ("return", "Echo: still here")


def _children_running(marker: str, *, unless: str | None = None) -> list[int]:
    """Pids of this process's children whose command line contains `marker` (not `unless`)."""
    pids: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        wanted = marker in cmdline and (unless is None or unless not in cmdline)
        if parent == os.getpid() and wanted:
            pids.append(int(entry.name))
    return pids


async def test_a_server_killed_under_a_call_fails_the_step_naming_it() -> None:
    toolset = _toolset("everything", command=_everything())

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if len(messages) > 1:
            return ModelResponse(parts=[TextPart("unexpected")])
        (pid,) = _children_running("server-everything", unless="streamableHttp")
        os.kill(pid, signal.SIGKILL)
        args = {"duration": 5, "steps": 5}
        return ModelResponse(parts=[_call("trigger-long-running-operation", "c", **args)])

    with pytest.raises(McpServerError) as raised:
        await Agent(FunctionModel(model), toolsets=[toolset]).run("go")

    message = str(raised.value)
    assert "MCP server 'everything'" in message
    assert "trigger-long-running-operation" in message


# --- streamable HTTP ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def everything_http() -> Iterator[str]:
    """server-everything over streamable HTTP on a free port; its /mcp URL."""
    node, script = _everything()
    port = _free_port()
    env = {**BASE_ENV, "PORT": str(port)}
    process = subprocess.Popen(
        [node, script, "streamableHttp"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_listening(process, port)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        process.terminate()
        process.communicate(timeout=10)


def _wait_listening(process: subprocess.Popen[str], port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"server-everything exited: {process.communicate()[1]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    pytest.fail("server-everything did not listen within 30 s")


@pytest.fixture(scope="module")
def guarded_url(everything_http: str) -> Iterator[str]:
    """server-everything behind a proxy that answers 401 without `Authorization: Bearer TOKEN`."""
    port = _free_port()
    config = uvicorn.Config(
        _BearerProxy(everything_http.rsplit("/", 1)[0], TOKEN),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="off",
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}/mcp"
    server.should_exit = True
    thread.join(timeout=10)


class _BearerProxy:
    """An ASGI reverse proxy that checks the bearer token and streams everything else through."""

    def __init__(self, upstream: str, token: str) -> None:
        self.upstream = upstream
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = [(k, v) for k, v in scope["headers"] if k not in (b"host", b"authorization")]
        if dict(scope["headers"]).get(b"authorization") != self.expected:
            await send({"type": "http.response.start", "status": 401, "headers": []})
            await send({"type": "http.response.body", "body": b"unauthorized"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        async with httpx.AsyncClient(timeout=None) as client:
            url = self.upstream + scope["path"]
            request = client.build_request(scope["method"], url, headers=headers, content=body)
            response = await client.send(request, stream=True)
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": response.headers.raw,
                }
            )
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            await response.aclose()


async def test_a_streamable_http_server_lists_its_tools(everything_http: str) -> None:
    tools = await _list("everything", url=everything_http)

    assert {"echo", "get-env", "get-sum"} <= set(tools)


async def test_headers_read_their_values_from_the_environment(
    guarded_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    toolset = _toolset(
        "search",
        url=guarded_url,
        headers={"Authorization": "Bearer ${AM_SEARCH_TOKEN}"},
        environ={"AM_SEARCH_TOKEN": TOKEN},
    )

    seen = await _run(toolset, [_call("echo", "e", message="over http")])

    assert seen.results["e"] == ("return", "Echo: over http")
    assert TOKEN not in caplog.text


async def test_a_refused_token_is_an_http_401_naming_the_server(guarded_url: str) -> None:
    headers = {"Authorization": "Bearer ${AM_SEARCH_TOKEN}"}
    environ = {"AM_SEARCH_TOKEN": "wrong-token-value"}

    with pytest.raises(MissingCredentialError) as raised:
        await _list("search", url=guarded_url, headers=headers, environ=environ)

    message = str(raised.value)
    assert "MCP server 'search'" in message
    assert "HTTP 401" in message
    assert "wrong-token-value" not in message


def test_a_header_variable_that_is_not_set_is_a_config_error_naming_it() -> None:
    headers = {"Authorization": "Bearer ${AM_SEARCH_TOKEN}", "X-Team": "${AM_TEAM}"}

    with pytest.raises(ConfigError) as raised:
        _toolset("search", url="http://127.0.0.1:1/mcp", headers=headers, environ={"AM_TEAM": "t"})

    assert len(raised.value.problems) == 1
    assert "MCP server 'search'" in str(raised.value)
    assert "${AM_SEARCH_TOKEN}, which is not set" in str(raised.value)
    assert "set AM_SEARCH_TOKEN" in str(raised.value)


# --- the idempotency key -----------------------------------------------------------------


async def test_each_call_carries_its_idempotency_key_in_meta(tmp_path: Path) -> None:
    script = tmp_path / "meta_echo.py"
    script.write_text(META_ECHO_SERVER)
    toolset = _toolset("meta", command=[sys.executable, str(script)])
    call = ToolCall(
        run_id="run-1",
        step="review",
        name="show_meta",
        call_id="c7",
        idempotency_key="run-1/review/c7",
    )

    with executing(call):
        seen = await _run(toolset, [_call("show_meta", "m")])

    meta = json.loads(seen.results["m"][1])
    assert meta["idempotency_key"] == "run-1/review/c7"


async def test_outside_a_recorded_call_no_key_is_sent() -> None:
    sent: list[dict[str, Any] | None] = []

    async def call_tool(
        name: str, args: dict[str, Any], *, metadata: dict[str, Any] | None = None
    ) -> str:
        sent.append(metadata)
        return "ok"

    await send_idempotency_key(None, call_tool, "t", {})  # pyright: ignore[reportArgumentType]

    assert sent == [None]


# --- servers that cannot be used -----------------------------------------------------------


async def test_a_missing_program_names_the_server_and_the_fix() -> None:
    with pytest.raises(MissingDependencyError) as raised:
        await _list("tickets", command=["am-no-such-mcp-server", "--stdio"])

    assert str(raised.value) == (
        "MCP server 'tickets': program 'am-no-such-mcp-server' was not found: install it, "
        "or fix `command` in `mcp: tickets` (a program on PATH or a path)"
    )


async def test_a_missing_program_fails_the_agent_run_the_same_way() -> None:
    toolset = _toolset("tickets", command=["am-no-such-mcp-server"])

    with pytest.raises(MissingDependencyError, match="MCP server 'tickets'"):
        await _run(toolset)


async def test_a_server_that_exits_at_start_shows_its_last_output() -> None:
    crash = "import sys; sys.stderr.write('error: unknown flag --x\\n'); sys.exit(3)"

    with pytest.raises(McpServerError) as raised:
        await _list("broken", command=[sys.executable, "-c", crash])

    message = str(raised.value)
    assert "MCP server 'broken'" in message
    assert "stopped before it answered" in message
    assert "error: unknown flag --x" in message


async def test_a_server_that_never_answers_times_out() -> None:
    with pytest.raises(McpServerError, match=r"'silent' .* did not answer within 1s"):
        await _list("silent", command=["sleep", "30"], connect_timeout=1)


async def test_a_refused_connection_names_the_url_without_credentials() -> None:
    url = f"http://user:pw@127.0.0.1:{_free_port()}/mcp?key=abc"

    with pytest.raises(McpServerError) as raised:
        await _list("remote", url=url)

    message = str(raised.value)
    assert "MCP server 'remote' at http://127.0.0.1:" in message
    assert "connection refused" in message
    assert "pw" not in message
    assert "abc" not in message


async def test_a_missing_working_directory_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "gone"

    with pytest.raises(MissingDependencyError, match=r"working directory .*gone does not exist"):
        await list_server_tools(
            "time",
            command=[sys.executable, "-m", "mcp_server_time"],
            url=None,
            env_names=[],
            headers={},
            cwd=missing,
            environ=BASE_ENV,
        )


# --- doctor ---------------------------------------------------------------------------------


def test_doctor_lists_each_servers_tools_or_its_problem(tmp_path: Path) -> None:
    python = json.dumps(sys.executable)
    config = tmp_path / "agentmill.yaml"
    config.write_text(
        "agents:\n  a:\n    tools: [{mcp: time}]\n"
        "mcp:\n"
        f"  time: {{command: [{python}, -m, mcp_server_time]}}\n"
        f"  broken: {{command: [{python}, -c, 'import sys; sys.exit(\"no config here\")']}}\n"
        f"  remote: {{url: 'http://127.0.0.1:{_free_port()}/mcp'}}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTMILL_")}
    env |= {"AGENTMILL_HOME": str(tmp_path / ".agentmill"), "COLUMNS": "300"}

    result = subprocess.run(
        [sys.executable, "-m", "agentmill", "doctor", str(config)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    time_row = next(line for line in lines if line.lstrip().startswith("time "))
    assert "2 tools: get_current_time, convert_time" in time_row
    assert "MCP server 'broken'" in result.stdout
    assert "no config here" in result.stdout
    assert "MCP server 'remote' at http://127.0.0.1:" in result.stdout
    assert "connection refused" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_nothing_is_left_running() -> None:
    """Every stdio server of this module ended with its toolset (no kept-alive process)."""
    assert _children_running("mcp_server_") == []
    assert _children_running("server-everything", unless="streamableHttp") == []
