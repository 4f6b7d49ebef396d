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
HEAD = "0001"


def current_revision(conn: Connection) -> str | None:
    if not sa.inspect(conn).has_table(VERSION_TABLE):
        return None
    found = conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()
    return str(found) if found is not None else None


def upgrade(conn: Connection) -> None:
    # A store that is current, as on every start but the first, needs no Alembic: not
    # importing it spares the server ~9 MB and a tenth of a second.
    if current_revision(conn) == HEAD:
        return
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent))
    config.attributes["connection"] = conn
    command.upgrade(config, "head")
