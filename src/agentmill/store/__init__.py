"""agentmill's own tables (runs, step checkpoints, events) and their migrations."""

from agentmill.store.costs import CostSummary, cost_totals, run_cost
from agentmill.store.records import (
    CallRecord,
    CallStatus,
    EventRecord,
    RunRecord,
    RunStatus,
    StepRecord,
    StepStatus,
)
from agentmill.store.store import DEFAULT_TENANT, Store

__all__ = [
    "DEFAULT_TENANT",
    "CallRecord",
    "CallStatus",
    "CostSummary",
    "EventRecord",
    "RunRecord",
    "RunStatus",
    "StepRecord",
    "StepStatus",
    "Store",
    "cost_totals",
    "run_cost",
]
