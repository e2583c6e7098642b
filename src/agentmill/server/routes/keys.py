"""/v1/keys: an admin manages the API keys of its own tenant."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, status
from pydantic import BaseModel, Field

from agentmill.server.auth import Admin
from agentmill.server.services import services
from agentmill.spec.models import PeriodBudgets
from agentmill.store.keys import ApiKey, Role

__all__ = ["router"]

router = APIRouter(tags=["keys"])


class KeyOut(BaseModel):
    id: str
    tenant: str
    role: Role
    name: str
    created_at: float
    revoked_at: float | None
    last_used_at: float | None
    budget: PeriodBudgets | None = Field(
        default=None, description="Limits on the runs the key starts, per UTC day and month"
    )

    @classmethod
    def of(cls, key: ApiKey) -> KeyOut:
        return cls(**key.__dict__)


class KeyCreate(BaseModel):
    role: Role
    name: str = Field(default="", max_length=200, pattern=r"^[^\x00-\x1f\x7f]*$")
    budget: PeriodBudgets | None = Field(
        default=None,
        description='Limits on the runs the key starts, e.g. {"day": {"usd": 5}, '
        '"month": {"usd": 100, "tokens": 2000000}}',
    )


class KeyBudget(BaseModel):
    budget: PeriodBudgets | None = Field(description="The new limits; null removes them")


class KeyCreated(KeyOut):
    secret: str = Field(description="The key itself: shown once, never stored")


class KeyList(BaseModel):
    items: list[KeyOut]


KeyId = Annotated[str, Path(max_length=32, pattern=r"^[A-Za-z0-9]+$", description="A key id")]


@router.get("/keys", summary="List this tenant's API keys")
async def list_keys(request: Request, principal: Admin) -> KeyList:
    found = await services(request).keys.list(tenant=principal.tenant)
    return KeyList(items=[KeyOut.of(key) for key in found])


@router.post("/keys", status_code=status.HTTP_201_CREATED, summary="Create a key")
async def create_key(request: Request, body: KeyCreate, principal: Admin) -> KeyCreated:
    key, secret = await services(request).keys.create(
        tenant=principal.tenant, role=body.role, name=body.name, budget=_budget(body.budget)
    )
    return KeyCreated(**KeyOut.of(key).model_dump(), secret=secret)


@router.put("/keys/{key_id}/budget", summary="Set or remove a key's daily and monthly budget")
async def set_key_budget(
    request: Request, key_id: KeyId, body: KeyBudget, principal: Admin
) -> KeyOut:
    key = await services(request).keys.set_budget(
        key_id, _budget(body.budget), tenant=principal.tenant
    )
    return KeyOut.of(key)


@router.post("/keys/{key_id}/revoke", summary="Revoke a key (at once)")
async def revoke_key(request: Request, key_id: KeyId, principal: Admin) -> KeyOut:
    key = await services(request).keys.revoke(key_id, tenant=principal.tenant)
    return KeyOut.of(key)


def _budget(budget: PeriodBudgets | None) -> dict[str, Any] | None:
    if budget is None:
        return None
    return budget.model_dump(mode="json", exclude_none=True) or None
