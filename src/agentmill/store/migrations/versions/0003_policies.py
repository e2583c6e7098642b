"""Policies: budgets (ledger and holds), the response cache, shared rate limits, step cost.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("am_runs") as batch:
        batch.add_column(sa.Column("budget", sa.JSON, nullable=True))
        batch.add_column(sa.Column("api_key_id", sa.String(32), nullable=True))
    with op.batch_alter_table("am_steps") as batch:
        batch.add_column(sa.Column("cost_usd", sa.Float, nullable=True))
        batch.add_column(sa.Column("details", sa.JSON, nullable=True))
    with op.batch_alter_table("am_api_keys") as batch:
        batch.add_column(sa.Column("budget", sa.JSON, nullable=True))
    op.create_table(
        "am_budget_ledger",
        sa.Column("scope", sa.String(400), primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("spent_usd", sa.Float, nullable=False, server_default="0"),
        sa.Column("spent_tokens", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("reserved_usd", sa.Float, nullable=False, server_default="0"),
        sa.Column("reserved_tokens", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_index("ix_am_budget_ledger_tenant", "am_budget_ledger", ["tenant"])
    op.create_table(
        "am_budget_holds",
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
    )
    op.create_index("ix_am_budget_holds_run", "am_budget_holds", ["run_id", "status"])
    op.create_table(
        "am_cache",
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
    )
    op.create_index("ix_am_cache_expires", "am_cache", ["expires_at"])
    op.create_index("ix_am_cache_usefulness", "am_cache", ["hits", "last_used_at"])
    op.create_table(
        "am_cache_stats",
        sa.Column("tenant", sa.String(64), primary_key=True),
        sa.Column("hits", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("misses", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("sets", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("evictions", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("expirations", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("integrity_failures", sa.BigInteger, nullable=False, server_default="0"),
    )
    op.create_table(
        "am_rate_limits",
        sa.Column("key", sa.String(300), primary_key=True),
        sa.Column("request_tat", sa.Float, nullable=False, server_default="0"),
        sa.Column("token_tat", sa.Float, nullable=False, server_default="0"),
    )
    op.create_table(
        "am_rate_leases",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("key", sa.String(300), nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
    )
    op.create_index("ix_am_rate_leases_key", "am_rate_leases", ["key", "expires_at"])


def downgrade() -> None:
    for table in (
        "am_rate_leases",
        "am_rate_limits",
        "am_cache_stats",
        "am_cache",
        "am_budget_holds",
        "am_budget_ledger",
    ):
        op.drop_table(table)
    with op.batch_alter_table("am_api_keys") as batch:
        batch.drop_column("budget")
    with op.batch_alter_table("am_steps") as batch:
        batch.drop_column("details")
        batch.drop_column("cost_usd")
    with op.batch_alter_table("am_runs") as batch:
        batch.drop_column("api_key_id")
        batch.drop_column("budget")
