"""Alembic's environment for the package's own migrations: run by `pullstats db upgrade`
(or `Database.upgrade()`), on the connection it is given."""

from __future__ import annotations

from alembic import context

from pullstats_middleware.durable.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata)
with context.begin_transaction():
    context.run_migrations()
