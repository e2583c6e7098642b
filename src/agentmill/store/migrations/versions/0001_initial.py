"""Runs, step checkpoints and the ordered event log.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "am_runs",
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
    )
    op.create_index("ix_am_runs_tenant_created", "am_runs", ["tenant", "created_at"])
    op.create_index("ix_am_runs_status", "am_runs", ["status"])
    op.create_table(
        "am_steps",
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
    )
    op.create_table(
        "am_events",
        sa.Column("run_id", sa.String(64), primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("step", sa.String(300), nullable=True),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("data", sa.JSON, nullable=False),
        sa.Column("ts", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("am_events")
    op.drop_table("am_steps")
    op.drop_index("ix_am_runs_status", "am_runs")
    op.drop_index("ix_am_runs_tenant_created", "am_runs")
    op.drop_table("am_runs")
