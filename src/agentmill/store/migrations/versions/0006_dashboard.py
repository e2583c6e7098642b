"""The dashboard: sign-in sessions, the columns and indexes its pages filter and group on.

- `am_sessions`: a browser's session, found by the digest of its cookie (the cookie value
  itself is never stored), with its CSRF token, the key (or one-time token) it came from,
  and when it expires.
- `am_runs.trigger_source` (`cli`, `api`, `github`, `schedule`, ...): the runs page filters
  on it; existing rows are filled from their `trigger` JSON.
- `am_steps.agent`: the costs page groups spend per agent.
- Indexes so the runs page stays fast at tens of thousands of runs: per tenant by workflow,
  status or trigger, newest first; steps by when they finished, for spend over time.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "am_sessions",
        sa.Column("digest", sa.String(64), primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=True),
        sa.Column("csrf", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
    )
    op.create_index("ix_am_sessions_expires", "am_sessions", ["expires_at"])
    with op.batch_alter_table("am_runs") as batch:
        batch.add_column(sa.Column("trigger_source", sa.String(20), nullable=True))
    with op.batch_alter_table("am_steps") as batch:
        batch.add_column(sa.Column("agent", sa.String(200), nullable=True))
    _fill_trigger_sources()
    op.create_index(
        "ix_am_runs_tenant_workflow_created", "am_runs", ["tenant", "workflow", "created_at"]
    )
    op.create_index(
        "ix_am_runs_tenant_status_created", "am_runs", ["tenant", "status", "created_at"]
    )
    op.create_index(
        "ix_am_runs_tenant_trigger_created", "am_runs", ["tenant", "trigger_source", "created_at"]
    )
    op.create_index("ix_am_steps_finished", "am_steps", ["finished_at"])


def _fill_trigger_sources() -> None:
    bind = op.get_bind()
    runs = sa.table(
        "am_runs",
        sa.column("id", sa.String),
        sa.column("trigger", sa.JSON),
        sa.column("trigger_source", sa.String),
    )
    rows = bind.execute(sa.select(runs.c.id, runs.c.trigger)).all()
    for run_id, trigger in rows:
        source = trigger_source_of(trigger)
        bind.execute(runs.update().where(runs.c.id == run_id).values(trigger_source=source))


def trigger_source_of(trigger: Any) -> str:
    """`cli` for a run with no trigger record (started from the command line)."""
    if isinstance(trigger, str):
        try:
            trigger = json.loads(trigger)
        except ValueError:
            return "cli"
    if isinstance(trigger, dict):
        source: Any = trigger.get("source")  # pyright: ignore[reportUnknownMemberType]
        if isinstance(source, str) and source:
            return source[:20]
    return "cli"


def downgrade() -> None:
    op.drop_index("ix_am_steps_finished", "am_steps")
    op.drop_index("ix_am_runs_tenant_trigger_created", "am_runs")
    op.drop_index("ix_am_runs_tenant_status_created", "am_runs")
    op.drop_index("ix_am_runs_tenant_workflow_created", "am_runs")
    with op.batch_alter_table("am_steps") as batch:
        batch.drop_column("agent")
    with op.batch_alter_table("am_runs") as batch:
        batch.drop_column("trigger_source")
    op.drop_index("ix_am_sessions_expires", "am_sessions")
    op.drop_table("am_sessions")
