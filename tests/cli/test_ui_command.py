"""`agentmill ui`: the dashboard over the local store, signed in by a one-time link."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time

import httpx

from tests.cli.conftest import Cli
from tests.servers import free_port

CONFIG = """
version: 1
models: {default: openai:gpt-4o}
agents:
  a: {instructions: brief}
workflows:
  w:
    steps:
      - {id: one, agent: a, prompt: "one"}
"""

_LINK = re.compile(r"(http://127\.0\.0\.1:\d+/login\?token=[A-Za-z0-9_-]+)")


def _link_of(process: subprocess.Popen[str], timeout: float = 60) -> str:
    """The sign-in link the command prints, once the server answers."""
    assert process.stderr is not None
    deadline = time.monotonic() + timeout
    printed = ""
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line and process.poll() is not None:
            raise AssertionError(f"ui exited with {process.returncode}: {printed}")
        printed += line
        found = _LINK.search(printed)
        if found:
            return found.group(1)
    raise AssertionError(f"no sign-in link in {printed!r}")


def _ready(base: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("ui never became ready")


def _stop(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()


def test_ui_signs_in_once_and_shows_runs_from_another_terminal(cli: Cli) -> None:
    (cli.cwd / "agentmill.yaml").write_text(CONFIG)
    port = free_port()
    ui = cli.start("ui", "--no-open", "--port", str(port), recording=True)
    try:
        link = _link_of(ui)
        base = f"http://127.0.0.1:{port}"
        _ready(base)
        with httpx.Client(base_url=base) as browser:
            signed = browser.get(link)
            assert signed.status_code == 303
            assert "am_session" in browser.cookies
            done = cli.run("run", "agentmill.yaml", "w", "--json", recording=True)
            assert done.returncode == 0, done.stderr
            run_id = json.loads(done.stdout)["run_id"]
            rows = browser.get("/?fragment=rows")
            assert rows.status_code == 200
            assert f'data-run="{run_id}"' in rows.text
            assert "status-succeeded" in rows.text
        with httpx.Client(base_url=base) as stranger:
            again = stranger.get(link)
            assert again.status_code == 401
            assert stranger.get("/").status_code == 303
    finally:
        _stop(ui)
    assert ui.returncode == 0


def test_ui_on_a_port_in_use_says_which_and_how_to_pick_another(cli: Cli) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli.run("ui", "--no-open", "--port", str(port))
    assert result.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "--port" in result.stderr
    assert "Traceback" not in result.stderr
