"""Tool approvals: an approval row can be a tool call's gate (`<step key>#<call id>`).

The row then holds the tool, the arguments the model asked for, the text the model wrote
with the call (its reason), and the arguments a reviewer edited when approving. Gate ids
grow longer than step ids (a step key, `#`, a call id), hence the wider `step_id`.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("am_approvals") as batch:
        batch.alter_column("step_id", type_=sa.String(400), existing_nullable=False)
        batch.add_column(sa.Column("tool", sa.String(200), nullable=True))
        batch.add_column(sa.Column("arguments", sa.JSON, nullable=True))
        batch.add_column(sa.Column("reason", sa.Text, nullable=True))
        batch.add_column(sa.Column("edited_arguments", sa.JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("am_approvals") as batch:
        batch.drop_column("edited_arguments")
        batch.drop_column("reason")
        batch.drop_column("arguments")
        batch.drop_column("tool")
        batch.alter_column("step_id", type_=sa.String(200), existing_nullable=False)
