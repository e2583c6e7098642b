"""Which command-line tools this machine has: each preset's program, where, which version."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from collections.abc import Mapping
from dataclasses import dataclass

from agentmill.agents.cli.checks import binary_of
from agentmill.agents.cli.presets import load_presets
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
    try:
        process = await asyncio.create_subprocess_exec(
            path,
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError:
        return None
    try:
        async with asyncio.timeout(VERSION_TIMEOUT):
            stdout, _ = await process.communicate()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)  # the tool and anything it started
        await process.wait()
        return None
    lines = stdout.decode(errors="replace").strip().splitlines()
    return lines[0][:200] if lines and process.returncode == 0 else None
