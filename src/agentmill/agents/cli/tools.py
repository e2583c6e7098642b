"""Which command-line tools this machine has: each preset's program, where, which version."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass

from agentmill.agents.cli.checks import binary_of
from agentmill.agents.cli.presets import load_presets
from agentmill.agents.cli.process import ProcessSpec, run_process
from agentmill.errors import UserError
from agentmill.settings import granted_environment
from agentmill.spec.presets import PresetSpec

__all__ = ["ToolStatus", "tool_statuses"]

VERSION_TIMEOUT = 5.0


@dataclass(frozen=True, kw_only=True)
class ToolStatus:
    preset: str
    program: str | None
    """None for a preset without a command of its own (`generic`)."""
    path: str | None
    version: str | None
    install: str


async def tool_statuses(extra: Mapping[str, PresetSpec] | None = None) -> list[ToolStatus]:
    """Every preset (built-in and `extra`), with its program's path and version if found."""
    presets = load_presets(extra)
    return list(
        await asyncio.gather(*(_status(name, preset) for name, preset in sorted(presets.items())))
    )


async def _status(name: str, preset: PresetSpec) -> ToolStatus:
    program = binary_of(preset.command)
    path = shutil.which(program) if program else None
    version = await _version(path, preset.version[1:]) if path and preset.version else None
    return ToolStatus(
        preset=name, program=program, path=path, version=version, install=preset.install
    )


async def _version(path: str, args: list[str]) -> str | None:
    """The first line the tool prints for its version, or None if it fails or hangs."""
    spec = ProcessSpec(
        argv=(path, *args),
        env=granted_environment(["PATH", "HOME"]),  # node-based tools need them
        cwd=tempfile.gettempdir(),
        timeout=VERSION_TIMEOUT,
        max_output=4096,
        grace=0.5,
    )
    try:
        result = await run_process(spec)
    except (UserError, OSError):
        return None
    lines = result.stdout.strip().splitlines()
    return lines[0][:200] if lines and result.exit_code == 0 else None
