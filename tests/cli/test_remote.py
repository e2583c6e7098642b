"""The CLI as a client: a real `agentmill serve` subprocess, the real CLI against it.

The server runs with scripted models (tests/fixtures/scripted_serve.py); the client runs the
plain CLI with AGENTMILL_URL and AGENTMILL_API_KEY and a home directory it must not touch.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentmill.cli.remote import RemoteClient
from agentmill.cli.sse import SseFrame, SseParser
from agentmill.errors import InputError, InvalidStateError, NotFoundError, UserError
from tests.cli.conftest import RECORDING_CLI, ROOT
from tests.servers import free_port, wait_ready

SCRIPTED_SERVE = ROOT / "tests" / "fixtures" / "scripted_serve.py"

CONFIG = """
version: 1
models: {default: openai:gpt-4o}
agents:
  writer: {instructions: brief}
workflows:
  echo:
    inputs: {topic: {type: string}}
    steps:
      - {id: draft, agent: writer, prompt: "draft {{ inputs.topic }}"}
      - {id: polish, agent: writer, needs: [draft], prompt: "polish {{ steps.draft.output }}"}
  slow:
    inputs: {topic: {type: string}}
    steps:
      - {id: one, agent: writer, prompt: "slow one {{ inputs.topic }}"}
      - {id: two, agent: writer, needs: [one], prompt: "slow two {{ inputs.topic }}"}
      - {id: three, agent: writer, needs: [two], prompt: "slow three {{ inputs.topic }}"}
  long:
    inputs: {topic: {type: string}}
    steps:
      - {id: a, agent: writer, prompt: "slow a {{ inputs.topic }}"}
      - {id: b, agent: writer, needs: [a], prompt: "slow b {{ inputs.topic }}"}
      - {id: c, agent: writer, needs: [b], prompt: "slow c {{ inputs.topic }}"}
      - {id: d, agent: writer, needs: [c], prompt: "slow d {{ inputs.topic }}"}
  held:
    inputs: {topic: {type: string}}
    steps:
      - {id: one, agent: writer, prompt: "hold one {{ inputs.topic }}"}
      - {id: two, agent: writer, needs: [one], prompt: "two {{ inputs.topic }}"}
      - {id: three, agent: writer, needs: [two], prompt: "three {{ inputs.topic }}"}
  gated:
    inputs: {topic: {type: string}}
    steps:
      - {id: draft, agent: writer, prompt: "draft {{ inputs.topic }}"}
      - {id: sign-off, needs: [draft], approval: {prompt: "Ship it?"}}
      - id: publish
        agent: writer
        needs: [sign-off]
        when: "{{ steps['sign-off'].approved }}"
        prompt: "publish ({{ steps['sign-off'].comment }})"
"""


def _clean_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTMILL_")}
    for key in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GOOGLE_API_KEY"):
        env.pop(key, None)
    env["AGENTMILL_HOME"] = str(home)
    env["PYTHONPATH"] = str(ROOT)
    env["COLUMNS"] = "200"
    return env


@dataclass
class Server:
    """`agentmill serve` with scripted models, and a client environment pointing at it."""

    root: Path
    env: dict[str, str]
    port: int
    key: str = ""
    process: subprocess.Popen[str] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config(self) -> Path:
        return self.root / "agentmill.yaml"

    @property
    def call_log(self) -> Path:
        return Path(self.env["AGENTMILL_TEST_CALL_LOG"])

    def agentmill(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The CLI on the server's own database (e.g. `keys create`)."""
        return subprocess.run(
            [sys.executable, "-m", "agentmill", *args],
            cwd=self.root, env=self.env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(SCRIPTED_SERVE), "serve", "--config", str(self.config),
             "--port", str(self.port), "--workers", "4"],
            cwd=self.root, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True, start_new_session=True,
        )  # fmt: skip
        wait_ready(self.process, self.url)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.communicate(timeout=60)
        self.process = None

    def calls(self) -> list[str]:
        if not self.call_log.exists():
            return []
        return [line.removeprefix("start ") for line in self.call_log.read_text().splitlines()]

    def release(self, topic: str) -> None:
        """Let the held calls of this topic answer (see tests/fixtures/scripted_serve.py)."""
        self.call_log.with_name(f"release-{topic}").touch()

    def wait_for_call(self, text: str) -> None:
        deadline = time.monotonic() + 30
        while not any(text in call for call in self.calls()):
            assert time.monotonic() < deadline, f"no model call with {text!r}"
            time.sleep(0.02)


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("server")
    env = _clean_env(root / ".agentmill")
    env["AGENTMILL_TEST_CALL_LOG"] = str(root / "calls.log")
    env["AGENTMILL_HEARTBEAT_INTERVAL"] = "0.5"
    if request.param == "postgres":
        env["AGENTMILL_DATABASE_URL"] = request.getfixturevalue("pg_url")
    found = Server(root=root, env=env, port=free_port())
    found.config.write_text(CONFIG)
    # A tenant of its own: the PostgreSQL database is shared by the whole test session.
    created = found.agentmill("keys", "create", "--tenant", f"t{uuid.uuid4().hex[:8]}")
    assert created.returncode == 0, created.stderr
    found.key = created.stdout.strip()
    found.start()
    try:
        yield found
    finally:
        found.stop()


@dataclass
class Client:
    """The plain CLI in remote mode, with a home directory it must never create."""

    cwd: Path
    env: dict[str, str]

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "agentmill", *args],
            cwd=self.cwd, env=self.env, capture_output=True, text=True, timeout=timeout,
            check=False,
        )  # fmt: skip

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "agentmill", *args],
            cwd=self.cwd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, start_new_session=True,
        )  # fmt: skip

    def json(self, *args: str) -> Any:
        result = self.run(*args)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)


@pytest.fixture
def client(server: Server, tmp_path: Path) -> Iterator[Client]:
    env = _clean_env(tmp_path / "client-home")
    env["AGENTMILL_URL"] = server.url
    env["AGENTMILL_API_KEY"] = server.key
    yield Client(cwd=tmp_path, env=env)
    assert not (tmp_path / "client-home").exists(), "remote mode touched the local store"


def _topic() -> str:
    return f"topic-{uuid.uuid4().hex[:8]}"


def _started_id(process: subprocess.Popen[str]) -> str:
    """The run id from the first stderr line of `agentmill run` (`run ID started (...)`)."""
    assert process.stderr is not None
    line = process.stderr.readline()
    assert line.startswith("run "), line
    return line.split()[1]


def _local_run(tmp_path: Path, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = _clean_env(tmp_path / "local-home")
    env["AGENTMILL_TEST_CALL_LOG"] = str(tmp_path / "local-calls.log")
    env["AGENTMILL_TEST_LATENCY"] = "0.01"
    return subprocess.run(
        [sys.executable, str(RECORDING_CLI), "run", str(config), *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


# runs


def test_run_streams_to_the_end_with_the_same_output_as_a_local_run(
    server: Server, client: Client, tmp_path: Path
) -> None:
    topic = _topic()
    remote = client.run("run", "not-sent.yaml", "echo", "-i", f"topic={topic}", "--json")
    local = _local_run(tmp_path, server.config, "echo", "-i", f"topic={topic}", "--json")
    assert remote.returncode == 0, remote.stderr
    assert local.returncode == 0, local.stderr
    got, expected = json.loads(remote.stdout), json.loads(local.stdout)
    assert got.keys() == expected.keys()
    assert [s.keys() for s in got["steps"]] == [s.keys() for s in expected["steps"]]
    assert got["status"] == "succeeded"
    assert got["outputs"] == expected["outputs"] == {"polish": f"done polish done draft {topic}"}
    assert [s["key"] for s in got["steps"]] == ["draft", "polish"]

    text = client.run("run", "not-sent.yaml", "echo", "-i", f"topic={topic}")
    local_text = _local_run(tmp_path, server.config, "echo", "-i", f"topic={topic}")
    assert text.returncode == 0, text.stderr
    assert text.stdout == local_text.stdout
    assert "draft finished" in text.stderr
    assert "polish finished" in text.stderr
    assert "succeeded" in text.stderr


def test_runs_list_show_and_logs(client: Client) -> None:
    topic = _topic()
    run = client.json("run", "-", "echo", "-i", f"topic={topic}", "--json")
    listed = client.json("runs", "list", "--json", "--workflow", "echo")
    assert listed[0]["run_id"] == run["run_id"]
    assert set(listed[0]) == {"run_id", "workflow", "status", "created_at", "finished_at", "usage"}
    assert client.json("runs", "show", run["run_id"], "--json") == run
    table = client.run("runs", "show", run["run_id"])
    assert table.returncode == 0, table.stderr
    assert "polish" in table.stdout

    logs = client.run("runs", "logs", run["run_id"])
    followed = client.run("runs", "logs", run["run_id"], "--follow")
    assert logs.returncode == followed.returncode == 0, logs.stderr + followed.stderr
    assert logs.stdout == followed.stdout
    events = [json.loads(line) for line in logs.stdout.splitlines()]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["kind"] == "run_finished"


def test_logs_follow_streams_a_live_run_to_its_end(server: Server, client: Client) -> None:
    topic = _topic()
    runner = client.start("run", "-", "slow", "-i", f"topic={topic}")
    run_id = _started_id(runner)
    server.wait_for_call(f"slow one {topic}")
    followed = client.run("runs", "logs", run_id, "--follow")
    runner.communicate(timeout=60)
    assert followed.returncode == 0, followed.stderr
    events = [json.loads(line) for line in followed.stdout.splitlines()]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert [e["step"] for e in events if e["kind"] == "step_finished"] == ["one", "two", "three"]
    assert events[-1]["kind"] == "run_finished"
    assert runner.returncode == 0


def test_cancel_then_resume_finishes_the_run(server: Server, client: Client) -> None:
    topic = _topic()
    runner = client.start("run", "-", "held", "-i", f"topic={topic}")
    run_id = _started_id(runner)
    server.wait_for_call(f"hold one {topic}")  # held until released: the cancel comes first
    cancelled = client.run("runs", "cancel", run_id)
    assert cancelled.returncode == 0, cancelled.stderr
    _, stderr = runner.communicate(timeout=60)
    assert runner.returncode == 1, stderr
    assert f"run {run_id} cancelled" in stderr
    assert client.json("runs", "show", run_id, "--json")["status"] == "cancelled"

    server.release(topic)
    resumed = client.run("runs", "resume", run_id, "--json")
    assert resumed.returncode == 0, resumed.stderr
    result = json.loads(resumed.stdout)
    assert result["status"] == "succeeded"
    assert result["outputs"] == {"three": f"done three {topic}"}
    assert [s["status"] for s in result["steps"]] == ["succeeded"] * 3

    # Following its log goes past the cancellation to the end of the resumed run.
    followed = client.run("runs", "logs", run_id, "--follow")
    assert followed.returncode == 0, followed.stderr
    assert followed.stdout == client.run("runs", "logs", run_id).stdout
    kinds = [json.loads(line)["kind"] for line in followed.stdout.splitlines()]
    assert [k for k in kinds if k.startswith("run_")] == [
        "run_started", "run_finished", "run_resumed", "run_finished"
    ]  # fmt: skip


def test_ctrl_c_stops_following_and_the_run_goes_on_on_the_server(
    server: Server, client: Client
) -> None:
    topic = _topic()
    runner = client.start("run", "-", "slow", "-i", f"topic={topic}")
    run_id = _started_id(runner)
    server.wait_for_call(f"slow one {topic}")
    os.kill(runner.pid, signal.SIGINT)
    _, stderr = runner.communicate(timeout=60)
    assert runner.returncode == 130, stderr
    assert "continues on the server" in stderr
    assert f"agentmill runs logs --follow {run_id}" in stderr
    followed = client.run("runs", "logs", run_id, "--follow")
    assert json.loads(followed.stdout.splitlines()[-1])["kind"] == "run_finished"
    assert client.json("runs", "show", run_id, "--json")["status"] == "succeeded"


def test_following_goes_on_through_a_server_restart(server: Server, client: Client) -> None:
    topic = _topic()
    runner = client.start("run", "-", "long", "-i", f"topic={topic}")
    run_id = _started_id(runner)
    follower = client.start("runs", "logs", "--follow", run_id)
    assert follower.stdout is not None
    first = follower.stdout.readline()  # following, before the server goes away
    server.wait_for_call(f"slow a {topic}")
    server.stop()  # the step in flight finishes, the run is handed back to the next server
    server.start()
    rest = follower.stdout.read()  # not communicate(): it would skip what readline buffered
    assert follower.wait(timeout=90) == 0, follower.communicate()[1]
    events = [json.loads(line) for line in [first, *rest.splitlines()]]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))  # none lost or twice
    kinds = [e["kind"] for e in events]
    assert "run_interrupted" in kinds, " ".join(f"{e['kind']}:{e['step']}" for e in events)
    assert kinds[-1] == "run_finished"
    out, _ = runner.communicate(timeout=90)
    assert runner.returncode == 0
    assert f"done slow d {topic}" in out
    # Followed afterwards, the log goes past the interruption to the end.
    again = client.run("runs", "logs", run_id, "--follow")
    assert [json.loads(line) for line in again.stdout.splitlines()] == events, again.stderr


def test_approve_decides_a_gate_on_the_server(server: Server, client: Client) -> None:
    runner = client.start("run", "-", "gated", "-i", f"topic={_topic()}")
    run_id = _started_id(runner)
    _wait_for_gate(server, run_id)
    listed = client.run("approvals", "list", "--run", run_id, "--json")
    assert listed.returncode == 0, listed.stderr
    assert [a["step_id"] for a in json.loads(listed.stdout)] == ["sign-off"]
    pending = json.loads(client.run("approvals", "list", "--json").stdout)
    assert run_id in [a["run_id"] for a in pending]
    approved = client.run("approve", run_id, "sign-off", "-m", "looks good")
    assert approved.returncode == 0, approved.stderr
    assert "sign-off approved" in approved.stdout
    out, err = runner.communicate(timeout=60)
    assert runner.returncode == 0, err
    assert "done publish (looks good)" in out
    again = client.run("approve", run_id, "sign-off", "--reject")
    assert again.returncode == 2


def _wait_for_gate(server: Server, run_id: str) -> None:
    deadline = time.monotonic() + 30
    url = f"{server.url}/v1/runs/{run_id}/approvals"
    while not httpx.get(url, headers=_auth(server)).json()["items"]:
        assert time.monotonic() < deadline, "the run did not reach its gate"
        time.sleep(0.05)


def _auth(server: Server) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.key}"}


# errors


def test_a_wrong_key_is_refused_without_showing_it(client: Client) -> None:
    client.env["AGENTMILL_API_KEY"] = "amk_wrong_secret_value_123"
    result = client.run("runs", "list")
    assert result.returncode == 2
    assert "AGENTMILL_API_KEY" in result.stderr
    assert "keys create" in result.stderr
    assert "amk_wrong_secret_value_123" not in result.stderr + result.stdout


def test_a_viewer_key_may_not_start_runs(server: Server, client: Client) -> None:
    created = server.agentmill("keys", "create", "--role", "viewer")
    client.env["AGENTMILL_API_KEY"] = created.stdout.strip()
    result = client.run("run", "-", "echo", "-i", "topic=x")
    assert result.returncode == 2
    assert "lacks the role" in result.stderr
    assert "--role operator" in result.stderr


def test_server_errors_map_to_the_cli_errors(client: Client) -> None:
    missing = client.run("runs", "show", "nosuchrun")
    assert missing.returncode == 2
    assert "nosuchrun" in missing.stderr
    bad_input = client.run("run", "-", "echo", "-i", "nosuch=1")
    assert bad_input.returncode == 2
    assert "nosuch" in bad_input.stderr
    finished = client.json("run", "-", "echo", "-i", "topic=x", "--json")
    again = client.run("runs", "resume", finished["run_id"])
    assert again.returncode == 2
    assert "already succeeded" in again.stderr


def test_an_unreachable_server_names_agentmill_url(tmp_path: Path) -> None:
    env = _clean_env(tmp_path / "home")
    env["AGENTMILL_URL"] = f"http://127.0.0.1:{free_port()}"
    env["AGENTMILL_API_KEY"] = "amk_some_secret"
    result = Client(tmp_path, env).run("runs", "list")
    assert result.returncode == 2
    assert "AGENTMILL_URL" in result.stderr
    assert "not reachable" in result.stderr
    assert "amk_some_secret" not in result.stderr


@pytest.mark.parametrize(
    ("present", "missing"),
    [("AGENTMILL_URL", "AGENTMILL_API_KEY"), ("AGENTMILL_API_KEY", "AGENTMILL_URL")],
)
def test_only_one_remote_setting_is_a_usage_error(
    tmp_path: Path, present: str, missing: str
) -> None:
    env = _clean_env(tmp_path / "home")
    env[present] = "http://127.0.0.1:9" if present == "AGENTMILL_URL" else "amk_secret"
    result = Client(tmp_path, env).run("runs", "list")
    assert result.returncode == 2
    assert f"{missing} is not" in result.stderr
    assert "amk_secret" not in result.stderr
    assert not (tmp_path / "home").exists()


# the event stream parser and reconnection, without a server


def _frames(text: str) -> list[SseFrame]:
    parser = SseParser()
    frames = [parser.feed(line) for line in text.split("\n")]
    return [frame for frame in frames if frame is not None]


def test_sse_frames_join_data_lines_and_skip_comments() -> None:
    frames = _frames(
        ": keepalive\n\n"
        "id: 7\nevent: step_output\ndata: first\ndata:second\ndata\n\n"
        "data: no event name\n\n"
    )
    assert frames == [
        SseFrame(event="step_output", data="first\nsecond\n", id="7"),
        SseFrame(event="message", data="no event name", id="7"),
    ]


def test_sse_last_event_id_survives_frames_without_one_and_id_only_frames() -> None:
    parser = SseParser()
    for line in ["id: 3", "data: a", "", "id: 4", "", "data: b", "", "id: bad\0id", ""]:
        parser.feed(line)
    assert parser.last_event_id == "4"  # the id-only frame moved it; a NUL id is ignored
    assert _frames("id:5\ndata: x\n\nid\ndata: y\n\n")[1].id == ""  # an empty id resets it


def _event(seq: int, kind: str = "step_output") -> bytes:
    body = {"run_id": "r1", "seq": seq, "kind": kind, "step": None, "attempt": 0,
            "data": {}, "ts": 1.0}  # fmt: skip
    return f"id: {seq}\nevent: {kind}\ndata: {json.dumps(body)}\n\n".encode()


async def test_follow_reconnects_after_the_last_event_seen_without_loss_or_repeats() -> None:
    resumed_after: list[str | None] = []

    async def dropped_after_two() -> AsyncIterator[bytes]:
        yield _event(1) + _event(2) + b": keepalive\n\n"
        raise httpx.ReadError("connection reset")

    def handler(request: httpx.Request) -> httpx.Response:
        resumed_after.append(request.headers.get("last-event-id"))
        if len(resumed_after) == 1:
            return httpx.Response(200, stream=_AsyncBody(dropped_after_two()))
        if len(resumed_after) == 2:
            # the server sends one event again (e.g. written as the connection dropped)
            return httpx.Response(200, content=_event(2) + _event(3) + _event(4, "run_finished"))
        return httpx.Response(204)  # the run has ended and nothing came after 4

    transport = httpx.MockTransport(handler)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        remote = RemoteClient(http, "http://test")
        seen = [event.seq async for event in remote.follow("r1")]
    assert seen == [1, 2, 3, 4]
    assert resumed_after == ["0", "2", "4"]


async def test_follow_goes_on_after_a_terminal_event_until_the_server_says_the_run_ended() -> None:
    answers = [
        httpx.Response(200, content=_event(1, "run_interrupted")),
        httpx.Response(200, content=_event(2, "run_resumed") + _event(3, "run_finished")),
        httpx.Response(204),
    ]
    transport = httpx.MockTransport(lambda request: answers.pop(0))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        seen = [event.kind async for event in RemoteClient(http, "http://test").follow("r1")]
    assert seen == ["run_interrupted", "run_resumed", "run_finished"]
    assert answers == []


class _AsyncBody(httpx.AsyncByteStream):
    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._chunks:
            yield chunk


async def test_a_429_is_retried_once_after_retry_after_then_reported() -> None:
    answers = [
        httpx.Response(429, headers={"Retry-After": "0"}, json={"detail": "slow down"}),
        httpx.Response(200, json={"items": [], "next_cursor": None}),
        httpx.Response(429, headers={"Retry-After": "0"}, json={"detail": "slow down"}),
        httpx.Response(429, headers={"Retry-After": "0"}, json={"detail": "slow down"}),
    ]
    transport = httpx.MockTransport(lambda request: answers.pop(0))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        remote = RemoteClient(http, "http://test")
        assert await remote.list_runs(status=None, workflow=None, limit=5) == []
        with pytest.raises(UserError, match="rate-limiting"):
            await remote.list_runs(status=None, workflow=None, limit=5)
    assert answers == []


@pytest.mark.parametrize(
    ("status", "error", "text"),
    [
        (401, UserError, "keys create"),
        (403, UserError, "lacks the role"),
        (404, NotFoundError, "no run"),
        (409, InvalidStateError, "no run"),
        (422, InputError, "no run"),
    ],
)
async def test_problems_map_to_the_cli_errors(
    status: int, error: type[Exception], text: str
) -> None:
    problem = {"type": "urn:x", "title": "t", "status": status, "detail": "no run 'x'"}
    transport = httpx.MockTransport(lambda request: httpx.Response(status, json=problem))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        with pytest.raises(error, match=text):
            await RemoteClient(http, "http://test").get_run("x")
