"""Dashboard sessions: a browser signed in with an API key (or `agentmill ui`'s one-time token).

The cookie holds a random token; only its SHA-256 digest is stored, so a database dump
signs no one in. A session dies when it expires, when its owner signs out, and with the
key it came from: a revoked key ends its sessions on their next request.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from agentmill.store.keys import Role
from agentmill.store.reconnect import reconnecting
from agentmill.store.tables import api_keys, sessions

__all__ = ["Session", "SessionStore"]


@dataclass(frozen=True, kw_only=True)
class Session:
    tenant: str
    role: Role
    key_id: str | None
    """The API key signed in with; None for `agentmill ui`'s one-time token."""
    csrf: str
    """The token every state-changing request of this session must carry."""
    expires_at: float


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class SessionStore:
    """Opening, finding and closing sessions; `ttl` seconds from sign-in to expiry."""

    def __init__(self, engine: AsyncEngine, *, ttl: float) -> None:
        self._engine = engine
        self._ttl = ttl

    @reconnecting
    async def open(self, *, tenant: str, role: Role, key_id: str | None) -> tuple[str, Session]:
        """A new session and the token for its cookie (the only place the token exists)."""
        token = secrets.token_urlsafe(32)
        now = time.time()
        session = Session(
            tenant=tenant,
            role=role,
            key_id=key_id,
            csrf=secrets.token_urlsafe(32),
            expires_at=now + self._ttl,
        )
        values = {**session.__dict__, "role": str(role), "digest": _digest(token)}
        async with self._engine.begin() as conn:
            await conn.execute(sessions.delete().where(sessions.c.expires_at <= now))
            await conn.execute(sessions.insert().values(created_at=now, **values))
        return token, session

    @reconnecting
    async def find(self, token: str) -> Session | None:
        """The live session of `token`: not expired, and its key (if any) not revoked."""
        query = (
            sa.select(sessions, api_keys.c.revoked_at)
            .select_from(sessions.outerjoin(api_keys, api_keys.c.id == sessions.c.key_id))
            .where(sessions.c.digest == _digest(token), sessions.c.expires_at > time.time())
        )
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).first()
        if row is None or (row.key_id is not None and row.revoked_at is not None):
            return None
        return Session(
            tenant=row.tenant,
            role=Role(row.role),
            key_id=row.key_id,
            csrf=row.csrf,
            expires_at=row.expires_at,
        )

    @reconnecting
    async def close(self, token: str) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(sessions.delete().where(sessions.c.digest == _digest(token)))
