"""Webhook deliveries, each processed once: the (source, id) primary key decides who does it.

A delivery is claimed by inserting its row as `processing` before any run is submitted;
a concurrent or later copy fails the insert and is a duplicate. The runs a delivery starts
carry an idempotency key (`github:<delivery>:<trigger>`), so the one case where a copy may
process it again is safe: the first attempt died before recording how it ended (the row
stayed `processing` past a lease) or ended in `error`. Submitting again then finds the run
already started instead of creating a second one, and a run never started is not lost.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from agentmill.store.reconnect import reconnecting, retrying
from agentmill.store.tables import deliveries

__all__ = ["PROCESSING_LEASE", "Claim", "DeliveryRecord", "DeliveryStore", "Outcome"]

Outcome = Literal["processing", "started", "ignored", "error"]

PROCESSING_LEASE = 60.0
"""Seconds after which a delivery still `processing` is taken to have died with its process.

Processing only renders templates and writes rows (milliseconds); a minute leaves a wide
margin, and GitHub redeliveries are made by hand, so the wait is rarely felt.
"""

_RETRYABLE: frozenset[str] = frozenset({"error"})


@dataclass(frozen=True, kw_only=True)
class DeliveryRecord:
    source: str
    id: str
    tenant: str
    event: str
    outcome: Outcome
    run_ids: list[str]
    received_at: float
    """When the delivery was (last) taken for processing, epoch seconds."""


@dataclass(frozen=True, kw_only=True)
class Claim:
    """The answer to "may I process this delivery?"."""

    taken: bool
    """True: process it now (first time, or a retry after a crash or an error)."""
    record: DeliveryRecord
    """The row as it now stands (for a duplicate: the earlier processing's outcome and runs)."""


class DeliveryStore:
    """Claiming deliveries and recording how their processing ended, for one tenant."""

    def __init__(self, engine: AsyncEngine, *, tenant: str, lease: float = PROCESSING_LEASE):
        self._engine = engine
        self.tenant = tenant
        self.lease = lease

    async def claim(self, source: str, delivery_id: str, *, event: str) -> Claim:
        """Take the delivery for processing, unless another copy has (or is doing so)."""
        record = DeliveryRecord(
            source=source,
            id=delivery_id,
            tenant=self.tenant,
            event=event,
            outcome="processing",
            run_ids=[],
            received_at=time.time(),
        )
        # One claim time for every try: a try run again after its commit was applied but
        # its answer lost (`store/reconnect.py`) finds its own row, not a duplicate's.
        return await retrying(lambda: self._claim(record))

    async def _claim(self, record: DeliveryRecord) -> Claim:
        while True:
            try:
                async with self._engine.begin() as conn:
                    await conn.execute(deliveries.insert().values(**record.__dict__))
            except IntegrityError:
                earlier = await self.get(record.source, record.id)
                if earlier is not None and _claimed_by(earlier, record):
                    return Claim(taken=True, record=earlier)
                if earlier is not None:
                    return await self._claim_existing(earlier, at=record.received_at)
                # Deleted between the insert and the read (retention): insert again.
            else:
                return Claim(taken=True, record=record)

    async def _claim_existing(self, earlier: DeliveryRecord, *, at: float) -> Claim:
        source, delivery_id = earlier.source, earlier.id
        if not self._may_retry(earlier):
            return Claim(taken=False, record=earlier)
        # Compare-and-set on what we read: of several retrying copies, one wins.
        query = (
            deliveries.update()
            .where(
                deliveries.c.source == source,
                deliveries.c.id == delivery_id,
                deliveries.c.outcome == earlier.outcome,
                deliveries.c.received_at == earlier.received_at,
            )
            .values(outcome="processing", received_at=at, tenant=self.tenant)
        )
        async with self._engine.begin() as conn:
            taken = (await conn.execute(query)).rowcount == 1
        if not taken:
            return Claim(taken=False, record=earlier)
        retried = dataclasses.replace(
            earlier, outcome="processing", received_at=at, tenant=self.tenant
        )
        return Claim(taken=True, record=retried)

    def _may_retry(self, record: DeliveryRecord) -> bool:
        if record.outcome in _RETRYABLE:
            return True
        return record.outcome == "processing" and record.received_at < time.time() - self.lease

    @reconnecting
    async def finish(
        self, source: str, delivery_id: str, *, outcome: Outcome, run_ids: list[str]
    ) -> None:
        """Record how processing ended and the runs it started."""
        query = (
            deliveries.update()
            .where(deliveries.c.source == source, deliveries.c.id == delivery_id)
            .values(outcome=outcome, run_ids=run_ids)
        )
        async with self._engine.begin() as conn:
            await conn.execute(query)

    @reconnecting
    async def get(self, source: str, delivery_id: str) -> DeliveryRecord | None:
        query = sa.select(deliveries).where(
            deliveries.c.source == source, deliveries.c.id == delivery_id
        )
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return None if row is None else _record(row._mapping)

    @reconnecting
    async def recent(self, *, limit: int = 20) -> list[DeliveryRecord]:
        """This tenant's deliveries, the most recently received first."""
        query = (
            sa.select(deliveries)
            .where(deliveries.c.tenant == self.tenant)
            .order_by(deliveries.c.received_at.desc(), deliveries.c.id.desc())
            .limit(limit)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_record(row._mapping) for row in rows]


def _claimed_by(row: DeliveryRecord, claim: DeliveryRecord) -> bool:
    """Whether `row` is `claim`'s own (its insert or takeover committed): the claim time
    is the claim's token."""
    return row.outcome == "processing" and row.received_at == claim.received_at


def _record(row: sa.RowMapping) -> DeliveryRecord:
    values: dict[str, Any] = dict(row)
    values["run_ids"] = list(values.get("run_ids") or [])
    return DeliveryRecord(**values)
