"""API keys: random secrets shown once, stored as SHA-256 digests under a visible id.

A key reads `amk_<id>_<secret>`. The id is public (it names the key in listings and logs);
the secret has 256 bits of entropy, so a fast digest is enough: there is nothing to
brute-force, unlike a password.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from agentmill.errors import InputError, NotFoundError
from agentmill.store.reconnect import reconnecting
from agentmill.store.tables import api_keys

__all__ = ["ApiKey", "KeyStore", "Role", "parse_key"]

_PREFIX = "amk_"


class Role(StrEnum):
    """What a key may do; each role includes the ones below it."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return list(Role).index(self)

    def allows(self, needed: Role) -> bool:
        return self.rank >= needed.rank


@dataclass(frozen=True, kw_only=True)
class ApiKey:
    id: str
    tenant: str
    role: Role
    name: str
    created_at: float
    revoked_at: float | None
    last_used_at: float | None
    budget: dict[str, Any] | None = None
    """Limits on the runs the key starts, per UTC day and month:
    `{"day": {"usd": 5.0}, "month": {"usd": 100.0, "tokens": 2000000}}`."""

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def parse_key(secret: str) -> str | None:
    """The key id in a presented key, or None if it is not shaped like one."""
    if not secret.startswith(_PREFIX):
        return None
    key_id, sep, rest = secret[len(_PREFIX) :].partition("_")
    if not sep or not key_id or not rest or len(key_id) > 32:
        return None
    return key_id


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyStore:
    """Creating, checking, listing and revoking API keys."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    @reconnecting
    async def create(
        self, *, tenant: str, role: Role, name: str = "", budget: dict[str, Any] | None = None
    ) -> tuple[ApiKey, str]:
        """A new key and its secret (the only time the secret exists outside the caller).
        `budget` limits the runs it starts per day and month (see `ApiKey.budget`)."""
        if not tenant.strip():
            raise InputError("a key needs a tenant: --tenant NAME")
        key_id = secrets.token_hex(6)
        secret = f"{_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        key = ApiKey(
            id=key_id,
            tenant=tenant,
            role=role,
            name=name,
            created_at=time.time(),
            revoked_at=None,
            last_used_at=None,
            budget=budget or None,
        )
        values = {**key.__dict__, "role": str(role), "digest": _digest(secret)}
        async with self._engine.begin() as conn:
            await conn.execute(api_keys.insert().values(**values))
        return key, secret

    @reconnecting
    async def verify(self, secret: str) -> ApiKey | None:
        """The active key matching `secret`, or None; digests compared in constant time."""
        key_id = parse_key(secret)
        if key_id is None:
            return None
        async with self._engine.connect() as conn:
            row = (await conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id))).first()
        if row is None:
            _digest(secret)  # same work whether or not the id exists
            return None
        if not hmac.compare_digest(row.digest, _digest(secret)) or row.revoked_at is not None:
            return None
        return _key(row._mapping)

    @reconnecting
    async def budget(self, key_id: str) -> dict[str, Any] | None:
        """The key's daily and monthly limits, if it has any."""
        query = sa.select(api_keys.c.budget).where(api_keys.c.id == key_id)
        async with self._engine.connect() as conn:
            return (await conn.execute(query)).scalar()

    @reconnecting
    async def set_budget(
        self, key_id: str, budget: dict[str, Any] | None, *, tenant: str | None = None
    ) -> ApiKey:
        """Replace the key's limits (None removes them); applies to calls from now on."""
        query = api_keys.update().where(api_keys.c.id == key_id)
        if tenant is not None:
            query = query.where(api_keys.c.tenant == tenant)
        async with self._engine.begin() as conn:
            await conn.execute(query.values(budget=budget or None))
        return await self._get(key_id, tenant=tenant)

    @reconnecting
    async def touch(self, key_id: str) -> None:
        query = api_keys.update().where(api_keys.c.id == key_id)
        async with self._engine.begin() as conn:
            await conn.execute(query.values(last_used_at=time.time()))

    @reconnecting
    async def list(self, *, tenant: str | None = None) -> list[ApiKey]:
        query = sa.select(api_keys).order_by(api_keys.c.created_at)
        if tenant is not None:
            query = query.where(api_keys.c.tenant == tenant)
        async with self._engine.connect() as conn:
            return [_key(row._mapping) for row in await conn.execute(query)]

    @reconnecting
    async def revoke(self, key_id: str, *, tenant: str | None = None) -> ApiKey:
        """Revoke a key at once; `tenant` scopes the lookup for a tenant's own admin."""
        query = api_keys.update().where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
        if tenant is not None:
            query = query.where(api_keys.c.tenant == tenant)
        async with self._engine.begin() as conn:
            await conn.execute(query.values(revoked_at=time.time()))
        return await self._get(key_id, tenant=tenant)

    async def _get(self, key_id: str, *, tenant: str | None) -> ApiKey:
        query = sa.select(api_keys).where(api_keys.c.id == key_id)
        if tenant is not None:
            query = query.where(api_keys.c.tenant == tenant)
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            raise NotFoundError(f"no API key {key_id!r}: list keys with `agentmill keys list`")
        return _key(row._mapping)


def _key(row: sa.RowMapping) -> ApiKey:
    return ApiKey(
        id=row["id"],
        tenant=row["tenant"],
        role=Role(row["role"]),
        name=row["name"],
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
        last_used_at=row["last_used_at"],
        budget=row["budget"],
    )
