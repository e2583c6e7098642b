"""Approval gates: one row per (run, gate step), the source of truth for its decision.

A decision is a compare-and-set on a pending, unexpired row, so it is recorded once: of
two people deciding at the same moment exactly one wins, and nobody decides after the
deadline. Times are epoch seconds, as in every agentmill table.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from agentmill.store.reconnect import reconnecting, retrying
from agentmill.store.tables import approvals

__all__ = ["ApprovalRecord", "ApprovalStatus", "ApprovalStore"]

_LIST_LIMIT = 500


class ApprovalStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"

    @property
    def decided(self) -> bool:
        """A person approved or rejected (an expiry is not a decision)."""
        return self in {ApprovalStatus.APPROVED, ApprovalStatus.REJECTED}


@dataclass(frozen=True, kw_only=True)
class ApprovalRecord:
    run_id: str
    step_id: str
    tenant: str
    status: ApprovalStatus
    prompt: str
    on_timeout: str
    """What an expiry means: `reject` (the gate counts as rejected) or `fail` (the step fails)."""
    created_at: float
    expires_at: float
    comment: str | None = None
    decided_by: str | None = None
    decided_at: float | None = None
    tool: str | None = None
    """A tool call's gate (`<step key>#<call id>`): the tool; None for a gate step."""
    arguments: dict[str, Any] | None = None
    """The arguments the model asked to call the tool with."""
    reason: str | None = None
    """What the model wrote along with the call (why it makes it), shown to reviewers."""
    edited_arguments: dict[str, Any] | None = None
    """Approved with these arguments instead of the model's."""

    @property
    def is_tool_call(self) -> bool:
        return self.tool is not None

    def overdue(self, now: float) -> bool:
        """Still pending although its deadline has passed (nobody has marked it yet)."""
        return self.status is ApprovalStatus.PENDING and self.expires_at <= now


class ApprovalStore:
    """Creating, reading and deciding approval rows."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    @reconnecting
    async def create(self, record: ApprovalRecord) -> ApprovalRecord:
        """Insert the row unless the gate already has one; return the stored row.

        A gate reached again (after a restart) keeps its first row, so its deadline and
        any decision made meanwhile are kept.
        """
        values = {**record.__dict__, "status": str(record.status)}
        dialect = self._engine.dialect.name
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        query = insert(approvals).values(**values).on_conflict_do_nothing()
        async with self._engine.begin() as conn:
            await conn.execute(query)
        stored = await self.get(record.run_id, record.step_id)
        assert stored is not None  # inserted just now, or there already
        return stored

    @reconnecting
    async def get(
        self, run_id: str, step_id: str, *, tenant: str | None = None
    ) -> ApprovalRecord | None:
        query = sa.select(approvals).where(
            approvals.c.run_id == run_id, approvals.c.step_id == step_id
        )
        if tenant is not None:
            query = query.where(approvals.c.tenant == tenant)
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return None if row is None else _record(row._mapping)

    @reconnecting
    async def list(
        self,
        *,
        tenant: str,
        status: ApprovalStatus | None = None,
        run_id: str | None = None,
        limit: int = _LIST_LIMIT,
    ) -> list[ApprovalRecord]:
        """A tenant's approvals, newest first; overdue ones are marked expired first."""
        await self.expire_overdue(tenant=tenant)
        query = sa.select(approvals).where(approvals.c.tenant == tenant)
        if status is not None:
            query = query.where(approvals.c.status == str(status))
        if run_id is not None:
            query = query.where(approvals.c.run_id == run_id)
        query = query.order_by(approvals.c.created_at.desc(), approvals.c.step_id).limit(limit)
        async with self._engine.connect() as conn:
            return [_record(row._mapping) for row in await conn.execute(query)]

    @reconnecting
    async def count(self, *, tenant: str, status: ApprovalStatus) -> int:
        """How many of a tenant's approvals have `status` (after `list`, which expires)."""
        query = sa.select(sa.func.count()).where(
            approvals.c.tenant == tenant, approvals.c.status == str(status)
        )
        async with self._engine.connect() as conn:
            return int((await conn.execute(query)).scalar_one())

    async def decide(
        self,
        run_id: str,
        step_id: str,
        *,
        tenant: str,
        approve: bool,
        comment: str | None,
        by: str,
        arguments: dict[str, Any] | None = None,
        now: float | None = None,
    ) -> bool:
        """Record a decision if the row is still pending and unexpired; True if this won.

        `arguments`: a tool call approved with edited arguments.
        """
        now = time.time() if now is None else now
        status = ApprovalStatus.APPROVED if approve else ApprovalStatus.REJECTED
        query = (
            approvals.update()
            .where(
                approvals.c.run_id == run_id,
                approvals.c.step_id == step_id,
                approvals.c.tenant == tenant,
                approvals.c.status == str(ApprovalStatus.PENDING),
                approvals.c.expires_at > now,
            )
            .values(
                status=str(status),
                comment=comment,
                decided_by=by,
                decided_at=now,
                edited_arguments=arguments,
            )
        )
        ours = sa.select(sa.literal(1)).where(
            approvals.c.run_id == run_id,
            approvals.c.step_id == step_id,
            approvals.c.status == str(status),
            approvals.c.decided_by == by,
            approvals.c.decided_at == now,
        )

        async def once() -> bool:
            async with self._engine.begin() as conn:
                if (await conn.execute(query)).rowcount == 1:
                    return True
                # A try run again after its commit was applied but its answer lost
                # (`store/reconnect.py`) finds its own decision: it won.
                return (await conn.execute(ours)).first() is not None

        return await retrying(once)

    @reconnecting
    async def expire(self, run_id: str, step_id: str, *, now: float | None = None) -> bool:
        """Mark a pending row whose deadline has passed as expired; True if this did it."""
        now = time.time() if now is None else now
        query = (
            approvals.update()
            .where(
                approvals.c.run_id == run_id,
                approvals.c.step_id == step_id,
                approvals.c.status == str(ApprovalStatus.PENDING),
                approvals.c.expires_at <= now,
            )
            .values(status=str(ApprovalStatus.EXPIRED), decided_at=now)
        )
        return await self._changed(query)

    @reconnecting
    async def expire_overdue(self, *, tenant: str, now: float | None = None) -> int:
        """Mark every overdue pending row of a tenant as expired (for accurate listings)."""
        now = time.time() if now is None else now
        query = (
            approvals.update()
            .where(
                approvals.c.tenant == tenant,
                approvals.c.status == str(ApprovalStatus.PENDING),
                approvals.c.expires_at <= now,
            )
            .values(status=str(ApprovalStatus.EXPIRED), decided_at=now)
        )
        async with self._engine.begin() as conn:
            return (await conn.execute(query)).rowcount

    @reconnecting
    async def reopen(
        self, run_id: str, step_id: str, *, created_at: float, expires_at: float
    ) -> bool:
        """Ask again after an expiry (a resumed run whose gate had failed on timeout)."""
        query = (
            approvals.update()
            .where(
                approvals.c.run_id == run_id,
                approvals.c.step_id == step_id,
                approvals.c.status == str(ApprovalStatus.EXPIRED),
            )
            .values(
                status=str(ApprovalStatus.PENDING),
                created_at=created_at,
                expires_at=expires_at,
                decided_at=None,
            )
        )
        return await self._changed(query)

    async def _changed(self, query: sa.Update) -> bool:
        async with self._engine.begin() as conn:
            return (await conn.execute(query)).rowcount == 1


def _record(row: sa.RowMapping) -> ApprovalRecord:
    data = dict(row)
    data["status"] = ApprovalStatus(data["status"])
    return ApprovalRecord(**data)
