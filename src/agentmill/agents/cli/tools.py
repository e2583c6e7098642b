"""Which command-line tools this machine has: each preset's program, where, which version,
and whether it finds credentials to authenticate with (by name, never a value)."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass

from agentmill.agents.cli.checks import binary_of, find_credentials
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
    credentials: str | None = None
    """Where the tool's credentials are (a variable's or a file's name), or why it has none;
    None for a preset that does not say what its tool needs."""
    authenticated: bool = True


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
    credentials, authenticated = _credentials(name, preset)
    return ToolStatus(
        preset=name,
        program=program,
        path=path,
        version=version,
        install=preset.install,
        credentials=credentials,
        authenticated=authenticated,
    )


def _credentials(name: str, preset: PresetSpec) -> tuple[str | None, bool]:
    wanted = preset.credentials
    if wanted is None or not (wanted.env or wanted.files):
        return None, True
    check = find_credentials(wanted, preset.env)
    if check.found is not None:
        return check.found, True
    return f"{check.missing(name, wanted)}: {wanted.login}".rstrip(": "), False


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
