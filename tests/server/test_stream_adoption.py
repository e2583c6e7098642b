"""Live streams through the death of the worker executing the run: two real `agentmill serve`
processes on one PostgreSQL database, followers on A, `kill -9` of B while it runs a step.

The streams on A stay open until A adopts the run, then deliver the adopted execution's
events up to its end; a reconnect with Last-Event-ID in between waits too (it used to be
closed at once, so clients spun until the adoption).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.server.test_events import Frame, FrameReader
from tests.servers import free_port, wait_ready

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[2]
SCRIPTED_SERVE = ROOT / "tests" / "fixtures" / "scripted_serve.py"
SSE = {"Accept": "text/event-stream"}
TOPIC = "t1"

CONFIG = """
version: 1
models: {default: openai:gpt-4o}
agents:
  writer: {instructions: brief}
workflows:
  held:
    steps:
      - {id: one, agent: writer, prompt: "hold one t1"}
      - {id: two, agent: writer, needs: [one], prompt: "two"}
"""


class Servers:
    """`agentmill serve` processes (scripted models) sharing one database and call log."""

    def __init__(self, root: Path, database_url: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTMILL_")}
        env.pop("OPENAI_API_KEY", None)
        self.env = env | {
            "AGENTMILL_HOME": str(root / ".agentmill"),
            "AGENTMILL_DATABASE_URL": database_url,
            "AGENTMILL_HEARTBEAT_INTERVAL": "0.5",
            "AGENTMILL_TEST_CALL_LOG": str(root / "calls.log"),
            "PYTHONPATH": str(ROOT),
        }
        self.root = root
        self.config = root / "agentmill.yaml"
        self.config.write_text(CONFIG)
        self.processes: list[subprocess.Popen[str]] = []

    def key(self) -> str:
        created = subprocess.run(
            [sys.executable, "-m", "agentmill", "keys", "create", "--tenant", "acme"],
            cwd=self.root, env=self.env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert created.returncode == 0, created.stderr
        return created.stdout.strip()

    def start(self) -> tuple[subprocess.Popen[str], str]:
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, str(SCRIPTED_SERVE), "serve", "--config", str(self.config),
             "--port", str(port), "--workers", "2"],
            cwd=self.root, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            text=True, start_new_session=True,
        )  # fmt: skip
        self.processes.append(process)
        url = f"http://127.0.0.1:{port}"
        wait_ready(process, url)
        return process, url

    def wait_for_call(self, prompt: str) -> None:
        log = Path(self.env["AGENTMILL_TEST_CALL_LOG"])
        deadline = time.monotonic() + 30
        while not (log.exists() and f"start {prompt}" in log.read_text()):
            assert time.monotonic() < deadline, f"no call {prompt!r}"
            time.sleep(0.02)

    def release(self) -> None:
        """Let the held step answer (tests/fixtures/scripted_serve.py)."""
        Path(self.env["AGENTMILL_TEST_CALL_LOG"]).with_name(f"release-{TOPIC}").touch()

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


@pytest.fixture
def servers(tmp_path: Path, fresh_pg_url: str) -> Iterator[Servers]:
    found = Servers(tmp_path, fresh_pg_url)
    try:
        yield found
    finally:
        found.stop_all()


async def test_streams_on_another_server_outlive_the_worker_and_end_with_the_run(
    servers: Servers,
) -> None:
    key = servers.key()
    auth = {"Authorization": f"Bearer {key}"}
    worker_b, url_b = servers.start()
    async with httpx.AsyncClient(headers=auth, timeout=60) as http:
        started = await http.post(f"{url_b}/v1/runs", json={"workflow": "held"})
        assert started.status_code == 201, started.text
        run_id = started.json()["id"]
        servers.wait_for_call(f"hold one {TOPIC}")  # B executes it (A is not up yet)
        _, url_a = servers.start()
        events = f"{url_a}/v1/runs/{run_id}/events"
        ws_url = events.replace("http://", "ws://") + "/ws"
        async with (
            http.stream("GET", events, headers=SSE) as sse,
            connect(ws_url, additional_headers=auth) as ws,
        ):
            reader = FrameReader(sse)
            before = await reader.take(2)  # run_started, step_started: B is running `one`
            assert [f.event for f in before] == ["run_started", "step_started"]
            os.killpg(worker_b.pid, signal.SIGKILL)
            worker_b.wait(timeout=30)
            servers.release()
            # A reconnect before anyone adopted the run waits, like the open streams.
            again = {**SSE, "Last-Event-ID": str(before[-1].id)}
            async with http.stream("GET", events, headers=again) as reconnected:
                assert reconnected.status_code == 200
                resumed = await FrameReader(reconnected).take()
            after = await reader.take()
            messages = [json.loads(str(m)) async for m in ws]
            assert ws.close_code == 1000
    frames = before + after
    _assert_to_the_end(frames)
    assert resumed == after
    assert [(m["seq"], m["kind"]) for m in messages] == [(f.id, f.event) for f in frames]


def _assert_to_the_end(frames: list[Frame]) -> None:
    assert [f.id for f in frames] == list(range(1, len(frames) + 1))
    runs = [f.event for f in frames if f.event.startswith("run_")]
    assert runs == ["run_started", "run_resumed", "run_finished"], runs
    assert frames[-1].data["data"]["status"] == "succeeded"
