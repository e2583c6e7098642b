"""Who is calling: API keys from `Authorization: Bearer`, roles, and the tenant they act for.

Every failure is the same 401 with a generic body, so a caller learns nothing about which
keys exist. A revoked key fails on its next request: keys are checked on every request.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from agentmill.server.problems import ApiProblem
from agentmill.server.services import Services, services
from agentmill.store.keys import Role

__all__ = ["Admin", "Operator", "Principal", "Viewer", "authenticate", "require"]

_TOUCH_EVERY = 60.0
"""How often a key's last-used time is written (not on every request)."""


@dataclass(frozen=True, kw_only=True)
class Principal:
    key_id: str
    tenant: str
    role: Role


def _unauthorized() -> ApiProblem:
    return ApiProblem(
        401,
        "unauthorized",
        "a valid API key is required: send Authorization: Bearer <key>",
        headers={"WWW-Authenticate": "Bearer"},
    )


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def authenticate(request: Request) -> Principal:
    """The caller's key, checked against the database, then rate-limited."""
    app = services(request)
    token = bearer_token(request)
    key = await app.keys.verify(token) if token else None
    if key is None:
        raise _unauthorized()
    app.limiter.check(key.id)
    await _touch(app, key.id)
    return Principal(key_id=key.id, tenant=key.tenant, role=key.role)


async def _touch(app: Services, key_id: str) -> None:
    now = time.monotonic()
    if now - app.touched.get(key_id, -_TOUCH_EVERY) >= _TOUCH_EVERY:
        app.touched[key_id] = now
        await app.keys.touch(key_id)


def require(role: Role):
    """A dependency admitting keys of `role` or above; others get 403 naming the role."""

    async def dependency(
        principal: Annotated[Principal, Depends(authenticate)],
    ) -> Principal:
        if not principal.role.allows(role):
            raise ApiProblem(
                403,
                "forbidden",
                f"this API key has the {principal.role} role; this needs {role} or above",
            )
        return principal

    return dependency


Viewer = Annotated[Principal, Depends(require(Role.VIEWER))]
Operator = Annotated[Principal, Depends(require(Role.OPERATOR))]
Admin = Annotated[Principal, Depends(require(Role.ADMIN))]
