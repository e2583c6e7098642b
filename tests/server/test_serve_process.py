"""A real `agentmill serve` subprocess: a run streamed end to end over SSE, and a graceful
shutdown (SIGTERM) in the middle of a step, continued by the next server.

The server is the real CLI with every model replaced by the recording model of
`tests/fixtures/recording_cli.py` (answers `done <prompt>`, logs each call).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from agentmill.settings import Settings
from agentmill.store import RunRecord, RunStatus, StepStatus, Store
from tests.server.test_events import Frame, FrameReader, parse_frames
from tests.servers import free_port, wait_ready

ROOT = Path(__file__).resolve().parents[2]
RECORDING_CLI = ROOT / "tests" / "fixtures" / "recording_cli.py"

CONFIG = """
version: 1
models: {default: openai:gpt-4o}
agents:
  writer: {instructions: be brief}
workflows:
  echo:
    inputs: {topic: {type: string}}
    steps:
      - {id: draft, agent: writer, prompt: "draft {{ inputs.topic }}"}
      - {id: polish, agent: writer, needs: [draft], prompt: "polish {{ steps.draft.output }}"}
"""
SSE = {"Accept": "text/event-stream"}


@dataclass
class ServeProcess:
    """`agentmill serve` subprocesses sharing one home (SQLite database) and call log."""

    home: Path
    env: dict[str, str]
    config: Path
    processes: list[subprocess.Popen[str]] = field(default_factory=list)
    port: int = 0

    def start(self) -> subprocess.Popen[str]:
        self.port = free_port()
        command = [sys.executable, str(RECORDING_CLI), "serve", "--config", str(self.config)]
        process = subprocess.Popen(
            [*command, "--port", str(self.port), "--workers", "2"],
            cwd=self.home,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.processes.append(process)
        wait_ready(process, self.url)
        return process

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def create_key(self) -> str:
        created = subprocess.run(
            [sys.executable, "-m", "agentmill", "keys", "create", "--tenant", "acme"],
            cwd=self.home,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert created.returncode == 0, created.stderr
        return created.stdout.strip()

    def calls(self) -> Counter[str]:
        log = Path(self.env["AGENTMILL_TEST_CALL_LOG"])
        lines = log.read_text().splitlines() if log.exists() else []
        return Counter(line.removeprefix("start ") for line in lines)

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
            if process.stderr is not None:
                process.stderr.close()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServeProcess]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTMILL_")}
    for key in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GOOGLE_API_KEY"):
        env.pop(key, None)
    env |= {
        "AGENTMILL_HOME": str(tmp_path / ".agentmill"),
        "AGENTMILL_HEARTBEAT_INTERVAL": "0.5",
        "AGENTMILL_TEST_CALL_LOG": str(tmp_path / "calls.log"),
        "AGENTMILL_TEST_LATENCY": "0.2",
        "PYTHONPATH": str(ROOT),
    }
    config = tmp_path / "agentmill.yaml"
    config.write_text(CONFIG)
    server = ServeProcess(home=tmp_path, env=env, config=config)
    try:
        yield server
    finally:
        server.stop_all()


@pytest.fixture
async def client(serve: ServeProcess) -> AsyncIterator[httpx.AsyncClient]:
    key = serve.create_key()
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(headers=headers, timeout=30) as http:
        yield http


async def _start_run(serve: ServeProcess, client: httpx.AsyncClient) -> str:
    body = {"workflow": "echo", "inputs": {"topic": "hello"}}
    response = await client.post(f"{serve.url}/v1/runs", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _assert_one_sequence(frames: list[Frame]) -> None:
    assert [f.id for f in frames] == list(range(1, len(frames) + 1))
    assert frames[-1].event == "run_finished"


async def test_a_run_streams_end_to_end_over_sse(
    serve: ServeProcess, client: httpx.AsyncClient
) -> None:
    serve.start()
    run_id = await _start_run(serve, client)
    url = f"{serve.url}/v1/runs/{run_id}/events"
    async with client.stream("GET", url, headers=SSE) as response:
        assert response.status_code == 200
        frames = [frame async for frame in parse_frames(response.aiter_lines())]
    _assert_one_sequence(frames)
    finished = frames[-1].data["data"]
    assert finished["status"] == "succeeded"
    assert finished["outputs"] == {"polish": "done polish done draft hello"}
    text = "".join(f.data["data"]["text"] for f in frames if f.event == "step_output")
    assert text == "done draft hello" + "done polish done draft hello"
    shown = (await client.get(f"{serve.url}/v1/runs/{run_id}")).json()
    assert shown["status"] == "succeeded"
    assert serve.calls() == {"draft hello": 1, "polish done draft hello": 1}


@pytest.mark.slow
async def test_sigterm_mid_step_finishes_the_step_and_the_next_server_continues(
    serve: ServeProcess, client: httpx.AsyncClient
) -> None:
    serve.env |= {"AGENTMILL_TEST_LATENCY": "1.5", "AGENTMILL_SHUTDOWN_GRACE": "20"}
    run_id, before = await _sigterm_during_first_step(serve, client)
    assert [f.event for f in before[:2]] == ["run_started", "step_started"]
    assert "run_finished" not in {f.event for f in before}

    run, steps = await _recorded(serve, run_id)
    assert run.status is RunStatus.INTERRUPTED
    assert run.auto_resume
    assert steps == {"draft": StepStatus.SUCCEEDED}

    serve.start()  # adopts the interrupted run on its own
    after = await _follow_to_the_end(client, f"{serve.url}/v1/runs/{run_id}/events", before)
    frames = before + after
    _assert_one_sequence(frames)
    assert [f.event for f in frames if f.event.startswith("run_")] == [
        "run_started",
        "run_interrupted",
        "run_resumed",
        "run_finished",
    ]
    assert frames[-1].data["data"]["status"] == "succeeded"
    assert serve.calls() == {"draft hello": 1, "polish done draft hello": 1}


async def _follow_to_the_end(client: httpx.AsyncClient, url: str, seen: list[Frame]) -> list[Frame]:
    """Reconnect with Last-Event-ID, as an EventSource does, until the run finishes."""
    found: list[Frame] = []
    deadline = time.monotonic() + 60
    while not found or found[-1].event != "run_finished":
        assert time.monotonic() < deadline, f"no run_finished within 60s: {found}"
        last = (seen + found)[-1].id
        headers = {**SSE, "Last-Event-ID": str(last)}
        async with client.stream("GET", url, headers=headers) as response:
            assert response.status_code == 200
            found += await FrameReader(response).take()
    return found


async def _recorded(serve: ServeProcess, run_id: str) -> tuple[RunRecord, dict[str, StepStatus]]:
    """The run and its checkpoints as stored, read while no server runs."""
    settings = Settings(home=serve.home / ".agentmill")
    store = await Store.open(settings.resolved_database_url)
    try:
        run = await store.get_run_any(run_id)
        steps = {step.key: step.status for step in await store.steps(run_id)}
    finally:
        await store.close()
    return run, steps


@pytest.mark.slow
async def test_a_step_cut_off_by_shutdown_runs_again_marked_as_superseding(
    serve: ServeProcess, client: httpx.AsyncClient
) -> None:
    serve.env |= {"AGENTMILL_TEST_LATENCY": "1.0", "AGENTMILL_SHUTDOWN_GRACE": "0"}
    run_id, before = await _sigterm_during_first_step(serve, client)

    serve.start()
    after = await _follow_to_the_end(client, f"{serve.url}/v1/runs/{run_id}/events", before)
    frames = before + after
    _assert_one_sequence(frames)
    starts = [(f.data["attempt"], f.data["data"]) for f in frames if f.event == "step_started"]
    assert starts[:2] == [(1, {}), (2, {"supersedes": 1})]
    assert frames[-1].data["data"]["outputs"] == {"polish": "done polish done draft hello"}
    assert serve.calls() == {"draft hello": 2, "polish done draft hello": 1}


async def _sigterm_during_first_step(
    serve: ServeProcess, client: httpx.AsyncClient
) -> tuple[str, list[Frame]]:
    """Start a server and a run, SIGTERM the server while the first step is in flight;
    returns the run and the frames its stream gave until the server stopped (exit 0)."""
    first = serve.start()
    run_id = await _start_run(serve, client)
    url = f"{serve.url}/v1/runs/{run_id}/events"
    async with client.stream("GET", url, headers=SSE) as response:
        reader = FrameReader(response)
        before = await reader.take(2)  # run_started, step_started: the first step is running
        first.send_signal(signal.SIGTERM)
        before += await reader.take()  # the stream ends at once; the server drains
    assert first.wait(timeout=60) == 0
    return run_id, before
