"""agentmill's own tables (runs, step checkpoints, events) and their migrations."""

from agentmill.store.records import EventRecord, RunRecord, RunStatus, StepRecord, StepStatus
from agentmill.store.store import DEFAULT_TENANT, Store

__all__ = [
    "DEFAULT_TENANT",
    "EventRecord",
    "RunRecord",
    "RunStatus",
    "StepRecord",
    "StepStatus",
    "Store",
]
