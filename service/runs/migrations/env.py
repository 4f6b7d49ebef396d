"""Alembic's entry point: migrate over the connection that `upgrade` passes in."""

from alembic import context

from service.runs.migrations import VERSION_TABLE

context.configure(
    connection=context.config.attributes["connection"],
    version_table=VERSION_TABLE,
)
with context.begin_transaction():
    context.run_migrations()
