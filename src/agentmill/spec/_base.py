"""The base of every model of the format: frozen, and unknown keys refused."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["Strict"]


class Strict(BaseModel):
    """Frozen, and an unknown key is an error: a misspelt key is never silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
