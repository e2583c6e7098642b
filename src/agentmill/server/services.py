"""What the routes share: settings, the engine, the loaded config, keys, limits, metrics."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Request

from agentmill.engine.engine import Engine
from agentmill.errors import NotFoundError
from agentmill.server.limits import RateLimiter, StreamSlots
from agentmill.server.metrics import Metrics
from agentmill.settings import Settings
from agentmill.spec.loader import LoadedProject
from agentmill.store.keys import KeyStore
from agentmill.store.sessions import SessionStore

__all__ = ["Services", "services"]


@dataclass(kw_only=True)
class Services:
    settings: Settings
    engine: Engine
    project: LoadedProject | None
    """The server's config file (workflows, agents, triggers); None when serving without one."""
    config_path: Path | None
    keys: KeyStore
    sessions: SessionStore
    """The dashboard's sign-in sessions."""
    limiter: RateLimiter
    streams: StreamSlots
    metrics: Metrics
    touched: dict[str, float] = field(default_factory=dict)
    """When each key's last-used time was last written (monotonic seconds)."""
    shutting_down: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the server starts to stop: open event streams end so clients reconnect."""

    def require_project(self) -> LoadedProject:
        if self.project is None:
            raise NotFoundError(
                "this server has no config file: start it with `agentmill serve --config FILE`"
            )
        return self.project


def services(request: Request) -> Services:
    found: Services = request.app.state.services
    return found
