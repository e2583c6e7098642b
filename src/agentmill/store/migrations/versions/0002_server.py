"""The server: API keys, approvals, webhook deliveries, and run columns for the API.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("am_runs") as batch:
        batch.add_column(sa.Column("idempotency_key", sa.String(200), nullable=True))
        batch.add_column(sa.Column("concurrency_key", sa.String(300), nullable=True))
        batch.add_column(sa.Column("parent_run_id", sa.String(64), nullable=True))
        batch.add_column(sa.Column("trigger", sa.JSON, nullable=True))
        batch.add_column(
            sa.Column("auto_resume", sa.Boolean, nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("served", sa.Boolean, nullable=False, server_default=sa.false()))
    op.create_index("ux_am_runs_idempotency", "am_runs", ["tenant", "idempotency_key"], unique=True)
    op.create_index("ix_am_runs_concurrency", "am_runs", ["tenant", "concurrency_key"])
    op.create_table(
        "am_api_keys",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("name", sa.String(200), nullable=False, server_default=""),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("revoked_at", sa.Float, nullable=True),
        sa.Column("last_used_at", sa.Float, nullable=True),
    )
    op.create_index("ix_am_api_keys_tenant", "am_api_keys", ["tenant"])
    op.create_table(
        "am_approvals",
        sa.Column("run_id", sa.String(64), primary_key=True),
        sa.Column("step_id", sa.String(200), primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("prompt", sa.Text, nullable=False, server_default=""),
        sa.Column("on_timeout", sa.String(20), nullable=False),
        sa.Column("comment", sa.Text, nullable=True),
        sa.Column("decided_by", sa.String(200), nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("decided_at", sa.Float, nullable=True),
    )
    op.create_index("ix_am_approvals_tenant_status", "am_approvals", ["tenant", "status"])
    op.create_table(
        "am_deliveries",
        sa.Column("source", sa.String(20), primary_key=True),
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("event", sa.String(100), nullable=False),
        sa.Column("outcome", sa.String(40), nullable=False),
        sa.Column("run_ids", sa.JSON, nullable=False),
        sa.Column("received_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("am_deliveries")
    op.drop_index("ix_am_approvals_tenant_status", "am_approvals")
    op.drop_table("am_approvals")
    op.drop_index("ix_am_api_keys_tenant", "am_api_keys")
    op.drop_table("am_api_keys")
    op.drop_index("ix_am_runs_concurrency", "am_runs")
    op.drop_index("ux_am_runs_idempotency", "am_runs")
    with op.batch_alter_table("am_runs") as batch:
        for column in (
            "auto_resume",
            "trigger",
            "parent_run_id",
            "concurrency_key",
            "idempotency_key",
        ):
            batch.drop_column(column)
