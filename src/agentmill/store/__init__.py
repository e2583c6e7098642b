"""agentmill's own tables (runs, step checkpoints, events) and their migrations."""

from agentmill.store.budget_usage import BudgetLevel, BudgetUsage, budget_usage
from agentmill.store.costs import (
    UNRECORDED_AGENT,
    CostGroup,
    CostSummary,
    cost_totals,
    run_cost,
    run_costs,
)
from agentmill.store.records import (
    CallRecord,
    CallStatus,
    EventRecord,
    RunRecord,
    RunStatus,
    StepRecord,
    StepStatus,
    trigger_source_of,
)
from agentmill.store.spend import BUCKET_SECONDS, Bucket, SeriesPoint, cost_series
from agentmill.store.store import DEFAULT_TENANT, Store
from agentmill.store.system import (
    DatabaseInfo,
    WorkerInfo,
    database_in_use,
    queue_depth,
    recent_deliveries,
    workers,
)

__all__ = [
    "BUCKET_SECONDS",
    "DEFAULT_TENANT",
    "UNRECORDED_AGENT",
    "Bucket",
    "BudgetLevel",
    "BudgetUsage",
    "CallRecord",
    "CallStatus",
    "CostGroup",
    "CostSummary",
    "DatabaseInfo",
    "EventRecord",
    "RunRecord",
    "RunStatus",
    "SeriesPoint",
    "StepRecord",
    "StepStatus",
    "Store",
    "WorkerInfo",
    "budget_usage",
    "cost_series",
    "cost_totals",
    "database_in_use",
    "queue_depth",
    "recent_deliveries",
    "run_cost",
    "run_costs",
    "trigger_source_of",
    "workers",
]
