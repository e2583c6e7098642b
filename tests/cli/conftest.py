"""Running the real CLI in a subprocess, in a scratch project directory."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RECORDING_CLI = ROOT / "tests" / "fixtures" / "recording_cli.py"


@dataclass
class Cli:
    """Runs `agentmill` (real or with the recording model) with a private store."""

    cwd: Path
    env: dict[str, str]

    @property
    def call_log(self) -> Path:
        return Path(self.env["AGENTMILL_TEST_CALL_LOG"])

    def command(self, *args: str, recording: bool = False) -> list[str]:
        if recording:
            return [sys.executable, str(RECORDING_CLI), *args]
        return [sys.executable, "-m", "agentmill", *args]

    def run(
        self, *args: str, recording: bool = False, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(*args, recording=recording),
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start(self, *args: str, recording: bool = False) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.command(*args, recording=recording),
            cwd=self.cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def calls(self) -> list[str]:
        if not self.call_log.exists():
            return []
        return [line.removeprefix("start ") for line in self.call_log.read_text().splitlines()]


def _base_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTMILL_")}
    for key in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GOOGLE_API_KEY"):
        env.pop(key, None)
    env["AGENTMILL_HOME"] = str(tmp_path / ".agentmill")
    env["AGENTMILL_HEARTBEAT_INTERVAL"] = "0.5"
    env["AGENTMILL_TEST_CALL_LOG"] = str(tmp_path / "calls.log")
    env["PYTHONPATH"] = str(ROOT)
    env["COLUMNS"] = "200"
    return env


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(cwd=tmp_path, env=_base_env(tmp_path))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_backend_cli(request: pytest.FixtureRequest, tmp_path: Path) -> Cli:
    env = _base_env(tmp_path)
    if request.param == "postgres":
        env["AGENTMILL_DATABASE_URL"] = request.getfixturevalue("fresh_pg_url")
    return Cli(cwd=tmp_path, env=env)
