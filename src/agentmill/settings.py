"""Settings: the only module that reads environment variables.

Library code receives a `Settings` object; entry points (CLI, server) build it once.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "credential_present", "credential_value"]


class Settings(BaseSettings):
    """agentmill settings, read from `AGENTMILL_*` environment variables."""

    model_config = SettingsConfigDict(env_prefix="AGENTMILL_", extra="ignore")

    home: Path = Field(default=Path(".agentmill"), description="Directory for the embedded store")
    database_url: str | None = Field(
        default=None,
        description="PostgreSQL URL for scale-out; the SQLite file in `home` when unset",
    )
    executor_id: str | None = Field(
        default=None, description="Override the per-process executor id (must be unique)"
    )
    max_executor_threads: int = Field(default=16, ge=1)
    heartbeat_interval: float = Field(default=2.0, gt=0)
    event_flush_interval: float = Field(default=0.05, gt=0)
    log_level: str = "WARNING"
    log_json: bool = False

    @property
    def resolved_database_url(self) -> str:
        """The database both DBOS and agentmill's own tables live in."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'agentmill.db').resolve()}"

    @property
    def is_sqlite(self) -> bool:
        return self.resolved_database_url.startswith("sqlite")


def credential_present(env_var: str) -> bool:
    """Whether an API key variable is set, without exposing its value."""
    return bool(os.environ.get(env_var))


def credential_value(env_var: str) -> str | None:
    """An API key for a provider client; callers must never log or echo it."""
    return os.environ.get(env_var) or None
