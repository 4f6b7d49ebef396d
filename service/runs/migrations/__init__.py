"""Schema migrations of the run store, with Alembic; `upgrade` brings a database to the newest.

A new schema version is a new file in `versions/` whose `down_revision` is the newest one,
and `HEAD` below names it (a test checks that they agree).
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection

# Our own version table, so that pipeserve can share a database with an app using Alembic.
VERSION_TABLE = "pipeserve_alembic_version"
# The newest revision in versions/.
HEAD = "0003"


def current_revision(conn: Connection) -> str | None:
    if not sa.inspect(conn).has_table(VERSION_TABLE):
        return None
    found = conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()
    return str(found) if found is not None else None


def upgrade(conn: Connection, metadata: sa.MetaData) -> None:
    """Bring the database to HEAD; `metadata` holds the tables as HEAD defines them."""
    # Alembic costs the server ~10 MiB of resident memory for good once imported: only a
    # store that is behind (an upgrade) needs it.
    current = current_revision(conn)
    if current == HEAD:
        return
    if current is None and not set(sa.inspect(conn).get_table_names()) & set(metadata.tables):
        _create_at_head(conn, metadata)
        return
    upgrade_with_alembic(conn)


def upgrade_with_alembic(conn: Connection) -> None:
    """Run the migrations in versions/ that the database has not had yet."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent))
    config.attributes["connection"] = conn
    command.upgrade(config, "head")


def _create_at_head(conn: Connection, metadata: sa.MetaData) -> None:
    """A new database: the tables built from their definitions and stamped at HEAD, as
    Alembic's cookbook does it ("Building an Up to Date Database from Scratch").
    A test checks that the migrations build the same schema."""
    metadata.create_all(conn)
    # Alembic's own version table, so that later upgrades and Alembic itself read it.
    version = sa.Table(
        VERSION_TABLE,
        sa.MetaData(),
        sa.Column("version_num", sa.String(32), nullable=False),
        sa.PrimaryKeyConstraint("version_num", name=f"{VERSION_TABLE}_pkc"),
    )
    version.create(conn)
    conn.execute(version.insert().values(version_num=HEAD))
