"""The run store's database: the engine for a URL (SQLite or PostgreSQL, one code path),
its transactions, and the migration of its schema.

Claims are atomic on both databases: PostgreSQL takes the oldest queued run with
`FOR UPDATE SKIP LOCKED`, so replicas never claim the same run; SQLite runs every writing
transaction as `BEGIN IMMEDIATE`, so writers are serialized across processes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from service.errors import PipeserveError
from service.files import locked
from service.runs.store_health import first_line
from service.runs.tables import metadata, runs

# An arbitrary constant: the PostgreSQL advisory lock that serializes migrations.
_LOCK_KEY = 0x70697065  # "pipe"


class StoreError(PipeserveError):
    """The store cannot be opened or migrated; the message is one line for the user."""


def json_serializer(value: Any) -> str:
    return orjson.dumps(value).decode()


def normalize_url(url: str) -> str:
    """`postgresql://` (and Heroku's `postgres://`) use psycopg 3; other URLs pass as they are."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def default_sqlite_url(home: str | Path, deployment_name: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", deployment_name) or "pipeline"
    return f"sqlite:///{Path(home) / 'runs' / safe}.db"


def redact(url: str) -> str:
    """The URL without its password, for logs and errors."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparsable database URL>"


class Database:
    """The runs of one deployment in one database: blocking calls, each a transaction.

    The run manager calls them from its own small thread pool, never on the event loop.
    Timestamps are epoch seconds (floats): portable, cheap to compare, and rendered as
    ISO 8601 only at the HTTP edge."""

    def __init__(self, url: str, deployment_name: str) -> None:
        self.url = normalize_url(url)
        self.deployment_name = deployment_name
        try:
            parsed = sa.make_url(self.url)
        except sa.exc.ArgumentError as exc:
            raise StoreError(f"database URL {redact(url)!r} is not valid: {exc}") from None
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        self.sqlite_path: Path | None = None
        if self.is_sqlite and parsed.database and parsed.database != ":memory:":
            self.sqlite_path = Path(parsed.database)
            self.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.engine: Engine = sa.create_engine(self.url, **_engine_options(self.is_sqlite))
        except Exception as exc:
            raise StoreError(f"cannot open the database {redact(url)}: {exc}") from None
        if self.is_sqlite:
            _configure_sqlite(self.engine)

    def migrate(self) -> None:
        """Bring the schema to the newest version (Alembic), once across replicas."""
        from service.runs.migrations import upgrade

        try:
            with self._migration_lock(), self.engine.connect() as conn:
                if not self.is_sqlite:
                    # Replicas starting together: one migrates, the others wait, then see it done.
                    conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": _LOCK_KEY})
                    conn.commit()
                try:
                    upgrade(conn, metadata)
                    conn.commit()
                finally:
                    if not self.is_sqlite:
                        conn.rollback()
                        conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": _LOCK_KEY})
                        conn.commit()
        except sa.exc.OperationalError as exc:
            raise StoreError(
                f"cannot reach the database {redact(self.url)}: {first_line(exc)}"
            ) from None

    @contextmanager
    def _migration_lock(self) -> Iterator[None]:
        if self.sqlite_path is None:
            yield
            return
        with locked(self.sqlite_path.with_name(self.sqlite_path.name + ".migrate.lock")):
            yield

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            conn = conn.execution_options(pipeserve_write=True)
            with conn.begin():
                yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn, conn.begin():
            yield conn

    def _mine(self) -> Any:
        """The runs of this deployment: others may share the database."""
        return runs.c.deployment_name == self.deployment_name


def _engine_options(is_sqlite: bool) -> dict[str, Any]:
    options: dict[str, Any] = {
        "json_serializer": json_serializer,
        "json_deserializer": orjson.loads,
    }
    if is_sqlite:
        options["connect_args"] = {"timeout": 30, "check_same_thread": False}
        return options
    options["pool_pre_ping"] = True
    # A database that is down must fail a call in seconds (then 503), not hang it.
    options["connect_args"] = {"connect_timeout": 5}
    options["pool_timeout"] = 10
    options["pool_size"] = 5
    options["max_overflow"] = 5
    return options


def _configure_sqlite(engine: Engine) -> None:
    """WAL, full sync, and `BEGIN IMMEDIATE` for writes (see the module docstring)."""

    @sa.event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, record: Any) -> None:
        # Let SQLAlchemy's `begin` event below emit BEGIN itself.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # FULL: a run acknowledged with 202 survives a power loss, not only a crash.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get("pipeserve_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def insert_statement(is_sqlite: bool, table: sa.Table) -> Any:
    """An INSERT that can say ON CONFLICT DO NOTHING, in this database's dialect."""
    if is_sqlite:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table)
    from sqlalchemy.dialects.postgresql import insert as postgresql_insert

    return postgresql_insert(table)
