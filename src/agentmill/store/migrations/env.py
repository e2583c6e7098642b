"""Alembic environment: runs with the connection handed over by `agentmill.store.migrate`."""

from __future__ import annotations

from alembic import context

from agentmill.store.db import VERSION_TABLE
from agentmill.store.tables import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
