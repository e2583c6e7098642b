"""The one place the CLI decides where runs execute.

Today every command runs the engine in this process on the configured database; a remote
client speaking to `agentmill serve` plugs in here with the same methods.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager

from agentmill.engine.engine import Engine
from agentmill.settings import Settings

__all__ = ["open_engine"]


@asynccontextmanager
async def open_engine(settings: Settings, *, workers: bool) -> AsyncGenerator[Engine]:
    """An engine for one command; `workers` launches execution in this process."""
    engine = Engine(settings)
    try:
        await engine.start(launch_workers=workers)
        yield engine
    finally:
        await engine.stop()
