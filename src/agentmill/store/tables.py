"""agentmill's own tables, in the same database as DBOS's system tables.

Times are epoch seconds (float) so SQLite and PostgreSQL behave alike. The schema is
created and evolved only by the Alembic migrations in `store/migrations`.
"""

from __future__ import annotations

import sqlalchemy as sa

__all__ = [
    "api_keys",
    "approvals",
    "budget_holds",
    "budget_ledger",
    "cache_entries",
    "cache_stats",
    "calls",
    "deliveries",
    "events",
    "metadata",
    "rate_leases",
    "rate_limits",
    "runs",
    "sessions",
    "steps",
]

metadata = sa.MetaData()

runs = sa.Table(
    "am_runs",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("tenant", sa.String(64), nullable=False, server_default="default"),
    sa.Column("workflow", sa.String(200), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("inputs", sa.JSON, nullable=False),
    sa.Column("outputs", sa.JSON, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("snapshot", sa.JSON, nullable=False),
    sa.Column("config_path", sa.Text, nullable=True),
    sa.Column("usage", sa.JSON, nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float, nullable=True),
    sa.Column("finished_at", sa.Float, nullable=True),
    sa.Column("owner", sa.String(200), nullable=True),
    sa.Column("owner_pid", sa.Integer, nullable=True),
    sa.Column("owner_host", sa.String(200), nullable=True),
    sa.Column("heartbeat_at", sa.Float, nullable=True),
    sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("workflow_id", sa.String(100), nullable=True),
    # added in 0002
    sa.Column("idempotency_key", sa.String(200), nullable=True),
    sa.Column("concurrency_key", sa.String(300), nullable=True),
    sa.Column("parent_run_id", sa.String(64), nullable=True),
    sa.Column("trigger", sa.JSON, nullable=True),
    sa.Column("auto_resume", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("served", sa.Boolean, nullable=False, server_default=sa.false()),
    # added in 0003
    sa.Column("budget", sa.JSON, nullable=True),
    sa.Column("api_key_id", sa.String(32), nullable=True),
    sa.Column("trigger_source", sa.String(20), nullable=True),  # added in 0006
    sa.Index("ix_am_runs_tenant_created", "tenant", "created_at"),
    sa.Index("ix_am_runs_tenant_workflow_created", "tenant", "workflow", "created_at"),
    sa.Index("ix_am_runs_tenant_status_created", "tenant", "status", "created_at"),
    sa.Index("ix_am_runs_tenant_trigger_created", "tenant", "trigger_source", "created_at"),
    sa.Index("ix_am_runs_status", "status"),
    sa.Index("ux_am_runs_idempotency", "tenant", "idempotency_key", unique=True),
    sa.Index("ix_am_runs_concurrency", "tenant", "concurrency_key"),
)

steps = sa.Table(
    "am_steps",
    metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("key", sa.String(300), primary_key=True),
    sa.Column("step_id", sa.String(200), nullable=False),
    sa.Column("item_index", sa.Integer, nullable=True),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("output", sa.JSON, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("usage", sa.JSON, nullable=True),
    sa.Column("model", sa.String(200), nullable=True),
    sa.Column("started_at", sa.Float, nullable=True),
    sa.Column("finished_at", sa.Float, nullable=True),
    # added in 0003
    sa.Column("cost_usd", sa.Float, nullable=True),
    sa.Column("details", sa.JSON, nullable=True),
    sa.Column("agent", sa.String(200), nullable=True),  # added in 0006
    sa.Index("ix_am_steps_finished", "finished_at"),
)

calls = sa.Table(
    "am_calls",
    metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("step", sa.String(300), primary_key=True),
    sa.Column("call_id", sa.String(100), primary_key=True),
    sa.Column("kind", sa.String(10), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("arguments", sa.JSON, nullable=True),
    sa.Column("result", sa.JSON, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("usage", sa.JSON, nullable=True),
    sa.Column("cost_usd", sa.Float, nullable=True),
    sa.Column("started_at", sa.Float, nullable=True),
    sa.Column("finished_at", sa.Float, nullable=True),
    sa.Column("details", sa.JSON, nullable=True),
)

events = sa.Table(
    "am_events",
    metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("step", sa.String(300), nullable=True),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("kind", sa.String(40), nullable=False),
    sa.Column("data", sa.JSON, nullable=False),
    sa.Column("ts", sa.Float, nullable=False),
)

api_keys = sa.Table(
    "am_api_keys",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("role", sa.String(20), nullable=False),
    sa.Column("name", sa.String(200), nullable=False, server_default=""),
    sa.Column("digest", sa.String(64), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("revoked_at", sa.Float, nullable=True),
    sa.Column("last_used_at", sa.Float, nullable=True),
    sa.Column("budget", sa.JSON, nullable=True),  # added in 0003
    sa.Index("ix_am_api_keys_tenant", "tenant"),
)

approvals = sa.Table(
    "am_approvals",
    metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    # A gate step's id, or a tool call's gate `<step key>#<call id>` (400 since 0005).
    sa.Column("step_id", sa.String(400), primary_key=True),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("prompt", sa.Text, nullable=False, server_default=""),
    sa.Column("on_timeout", sa.String(20), nullable=False),
    sa.Column("comment", sa.Text, nullable=True),
    sa.Column("decided_by", sa.String(200), nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Column("decided_at", sa.Float, nullable=True),
    # Added in 0005, for a tool call's gate (NULL for a gate step): the call, the text the
    # model wrote with it, and the arguments the reviewer who approved it edited.
    sa.Column("tool", sa.String(200), nullable=True),
    sa.Column("arguments", sa.JSON, nullable=True),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("edited_arguments", sa.JSON, nullable=True),
    sa.Index("ix_am_approvals_tenant_status", "tenant", "status"),
)

deliveries = sa.Table(
    "am_deliveries",
    metadata,
    sa.Column("source", sa.String(20), primary_key=True),
    sa.Column("id", sa.String(200), primary_key=True),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("event", sa.String(100), nullable=False),
    sa.Column("outcome", sa.String(40), nullable=False),
    sa.Column("run_ids", sa.JSON, nullable=False),
    sa.Column("received_at", sa.Float, nullable=False),
)

# 0003: budgets, response cache, shared rate limits

budget_ledger = sa.Table(
    "am_budget_ledger",
    metadata,
    # `run:<id>`, `run:<id>/agent:<name>`, `tenant:<t>/day:2026-11-23`, `key:<id>/month:2026-11`
    sa.Column("scope", sa.String(400), primary_key=True),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("spent_usd", sa.Float, nullable=False, server_default="0"),
    sa.Column("spent_tokens", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("reserved_usd", sa.Float, nullable=False, server_default="0"),
    sa.Column("reserved_tokens", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Index("ix_am_budget_ledger_tenant", "tenant"),
)

budget_holds = sa.Table(
    "am_budget_holds",
    metadata,
    sa.Column("id", sa.String(400), primary_key=True),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("call_key", sa.String(300), nullable=False),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("scopes", sa.JSON, nullable=False),
    sa.Column("usd", sa.Float, nullable=False),
    sa.Column("tokens", sa.BigInteger, nullable=False),
    sa.Column("status", sa.String(12), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("settled_at", sa.Float, nullable=True),
    sa.Index("ix_am_budget_holds_run", "run_id", "status"),
)

cache_entries = sa.Table(
    "am_cache",
    metadata,
    sa.Column("tenant", sa.String(64), primary_key=True),
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("value", sa.Text, nullable=False),
    sa.Column("signature", sa.String(64), nullable=False),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Column("last_used_at", sa.Float, nullable=False),
    sa.Column("hits", sa.Integer, nullable=False, server_default="0"),
    sa.Index("ix_am_cache_expires", "expires_at"),
    sa.Index("ix_am_cache_usefulness", "hits", "last_used_at"),
)

cache_stats = sa.Table(
    "am_cache_stats",
    metadata,
    sa.Column("tenant", sa.String(64), primary_key=True),
    sa.Column("hits", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("misses", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("sets", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("evictions", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("expirations", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("integrity_failures", sa.BigInteger, nullable=False, server_default="0"),
)

rate_limits = sa.Table(
    "am_rate_limits",
    metadata,
    # `<provider>` or `<provider>:<model>`, as configured under `limits`
    sa.Column("key", sa.String(300), primary_key=True),
    sa.Column("request_tat", sa.Float, nullable=False, server_default="0"),
    sa.Column("token_tat", sa.Float, nullable=False, server_default="0"),
)

rate_leases = sa.Table(
    "am_rate_leases",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("key", sa.String(300), nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Index("ix_am_rate_leases_key", "key", "expires_at"),
)

sessions = sa.Table(
    "am_sessions",
    metadata,
    sa.Column("digest", sa.String(64), primary_key=True),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("role", sa.String(20), nullable=False),
    sa.Column("key_id", sa.String(32), nullable=True),
    sa.Column("csrf", sa.String(64), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Index("ix_am_sessions_expires", "expires_at"),
)
