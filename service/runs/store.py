"""The run store: runs and their events, in SQLite (default) or PostgreSQL, with SQLAlchemy Core.

One code path serves both databases. The methods are blocking; the run manager calls them
from its own small thread pool, never on the event loop. Timestamps are epoch seconds
(floats): portable, cheap to compare, and rendered as ISO 8601 only at the HTTP edge.

Claims are atomic on both databases: PostgreSQL takes the oldest queued run with
`FOR UPDATE SKIP LOCKED`, so replicas never claim the same run; SQLite runs every writing
transaction as `BEGIN IMMEDIATE`, so writers are serialized across processes.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from service.files import locked

logger = logging.getLogger("pipeserve.runs")

metadata = sa.MetaData()

# Integer keys that autoincrement on both databases (SQLite only for INTEGER PRIMARY KEY).
_BigInt = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

runs = sa.Table(
    "pipeserve_runs",
    metadata,
    sa.Column("seq", _BigInt, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(36), nullable=False, unique=True),
    sa.Column("deployment_name", sa.String(255), nullable=False),
    sa.Column("pipeline_name", sa.String(255), nullable=False),
    sa.Column("pipeline_version", sa.String(64), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("request", sa.JSON, nullable=False),
    sa.Column("parameters_used", sa.JSON),
    sa.Column("steps", sa.JSON),
    sa.Column("outputs", sa.Text),
    sa.Column("outputs_omitted", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("error", sa.JSON),
    sa.Column("idempotency_key", sa.String(255)),
    sa.Column("request_hash", sa.String(64)),
    sa.Column("webhook_url", sa.Text),
    sa.Column("webhook_status", sa.String(16)),
    sa.Column("webhook_attempts", sa.JSON),
    sa.Column("webhook_next_at", sa.Float),
    sa.Column("owner", sa.String(64)),
    sa.Column("lease_expires_at", sa.Float),
    sa.Column("attempt", sa.Integer, nullable=False, server_default="0"),
    sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("finished_at", sa.Float),
    sa.Column("duration", sa.Float),
    # When lease recovery ended or requeued the run on a guess that its process had died;
    # cleared when that process's own end arrives after all (see `RunStore.finish`).
    sa.Column("recovered_at", sa.Float),
    sa.UniqueConstraint("deployment_name", "idempotency_key", name="uq_pipeserve_runs_idempotency"),
    sa.Index("ix_pipeserve_runs_deployment_status_seq", "deployment_name", "status", "seq"),
    sa.Index("ix_pipeserve_runs_deployment_created", "deployment_name", "created_at"),
)

events = sa.Table(
    "pipeserve_run_events",
    metadata,
    sa.Column("run_id", sa.String(36), primary_key=True),
    sa.Column("event_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("data", sa.JSON, nullable=False),
    sa.Column("at", sa.Float, nullable=False),
)

# A finished `/invoke` run: the columns the write-behind flush fills, in this order.
FINISHED_COLUMNS = (
    "run_id", "deployment_name", "pipeline_name", "pipeline_version", "kind", "status",
    "request", "parameters_used", "steps", "outputs", "outputs_omitted", "error",
    "created_at", "started_at", "finished_at", "updated_at", "duration",
)  # fmt: skip
_JSON_COLUMNS = frozenset(c.name for c in runs.c if isinstance(c.type, sa.JSON))

ACTIVE = ("queued", "running")
TERMINAL = ("succeeded", "failed", "cancelled", "timed_out")
# Finished runs one pruning transaction deletes at most.
PRUNE_BATCH = 500

# The columns a listing returns: everything but the (possibly large) outputs.
_SUMMARY = [c for c in runs.c if c.name != "outputs"]


class StoreError(Exception):
    """The store cannot be opened or migrated; the message is one line for the user."""


def is_transient(exc: BaseException) -> bool:
    """True for a failure of the database, not of the data: lost connections, a server
    that is down or restarting, a locked SQLite file, an exhausted pool. Such a write is
    kept and tried again; any other failure is the record's own and retrying cannot help."""
    if isinstance(exc, sa.exc.DBAPIError):
        return exc.connection_invalidated or isinstance(
            exc, (sa.exc.OperationalError, sa.exc.InterfaceError)
        )
    return isinstance(exc, (sa.exc.TimeoutError, sa.exc.DisconnectionError, ConnectionError))


class QueueFull(Exception):
    """As many runs are queued as the settings allow."""

    def __init__(self, queued: int) -> None:
        super().__init__(f"{queued} runs are queued")
        self.queued = queued


@dataclass(slots=True)
class StoreHealth:
    """Whether the run store answered its last call: `/ready` shows it, and an outage is
    logged once when it starts and once when it ends, not at every retry."""

    failing_since: float | None = None
    last_error: str | None = None
    # Told True when an outage starts, False when it ends (the `store_up` gauge).
    on_change: Callable[[bool], None] | None = None

    @property
    def degraded(self) -> bool:
        return self.failing_since is not None

    def failed(self, exc: BaseException) -> None:
        self.last_error = _first_line(exc)
        if self.failing_since is None:
            self.failing_since = time.time()
            if self.on_change is not None:
                self.on_change(True)
            logger.error("the run store is unreachable; retrying", extra={"error": self.last_error})

    def ok(self) -> None:
        if self.failing_since is not None:
            logger.warning(
                "the run store is reachable again",
                extra={"outage_seconds": round(time.time() - self.failing_since, 3)},
            )
            self.failing_since = None
            self.last_error = None
            if self.on_change is not None:
                self.on_change(False)


@dataclass(frozen=True, slots=True)
class NewEvent:
    run_id: str
    event_id: int
    kind: str
    data: Mapping[str, Any]
    at: float


def _json_serializer(value: Any) -> str:
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


class RunStore:
    """Blocking access to the runs of one deployment."""

    def __init__(self, url: str, deployment_name: str) -> None:
        self.url = normalize_url(url)
        self.deployment_name = deployment_name
        try:
            parsed = sa.make_url(self.url)
        except sa.exc.ArgumentError as exc:
            raise StoreError(f"database URL {redact(url)!r} is not valid: {exc}") from None
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        self.sqlite_path: Path | None = None
        options: dict[str, Any] = {
            "json_serializer": _json_serializer,
            "json_deserializer": orjson.loads,
        }
        if self.is_sqlite:
            if parsed.database and parsed.database != ":memory:":
                self.sqlite_path = Path(parsed.database)
                self.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
            options["connect_args"] = {"timeout": 30, "check_same_thread": False}
        else:
            options["pool_pre_ping"] = True
            # A database that is down must fail a call in seconds (then 503), not hang it.
            options["connect_args"] = {"connect_timeout": 5}
            options["pool_timeout"] = 10
            options["pool_size"] = 5
            options["max_overflow"] = 5
        try:
            self.engine: Engine = sa.create_engine(self.url, **options)
        except Exception as exc:
            raise StoreError(f"cannot open the database {redact(url)}: {exc}") from None
        if self.is_sqlite:
            _configure_sqlite(self.engine)
        # Finished `/invoke` runs arrive by the hundred a flush: their insert is compiled
        # once for this database and executed as the driver's executemany, without
        # SQLAlchemy's per-row parameter processing (most of the flush's CPU otherwise).
        # Insert-if-absent: a batch retried after a commit whose answer was lost (the
        # connection dropped) must not fail on the rows it already wrote.
        compiled = (
            _insert_statement(self.is_sqlite, runs)
            .values({name: sa.bindparam(name) for name in FINISHED_COLUMNS})
            .on_conflict_do_nothing(index_elements=["run_id"])
            .compile(dialect=self.engine.dialect)
        )
        self._insert_finished = compiled.string
        self._insert_order = compiled.positiontup if compiled.positional else None

    # -- setup ----------------------------------------------------------------------

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
                f"cannot reach the database {redact(self.url)}: {_first_line(exc)}"
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
        return runs.c.deployment_name == self.deployment_name

    # -- writes ---------------------------------------------------------------------

    def submit(
        self, row: dict[str, Any], first_event: NewEvent, max_queued: int
    ) -> tuple[dict[str, Any], bool]:
        """Insert a queued run with its first event, unless `max_queued` runs wait already
        (`QueueFull`). With an idempotency key already used, return that run instead.
        Returns (run, created)."""
        key = row.get("idempotency_key")
        try:
            with self._write() as conn:
                if key is not None:
                    existing = self._by_idempotency_key(conn, key)
                    if existing is not None:
                        return existing, False
                queued = conn.execute(
                    sa.select(sa.func.count())
                    .select_from(runs)
                    .where(self._mine(), runs.c.status == "queued")
                ).scalar_one()
                if queued >= max_queued:
                    raise QueueFull(int(queued))
                conn.execute(runs.insert().values(**row))
                self._insert_events(conn, [first_event])
        except sa.exc.IntegrityError:
            # Another replica inserted the same key between our look and our insert.
            with self._read() as conn:
                existing = self._by_idempotency_key(conn, key)
            if existing is None:
                raise
            return existing, False
        return row, True

    def _by_idempotency_key(self, conn: Connection, key: Any) -> dict[str, Any] | None:
        found = conn.execute(
            sa.select(runs).where(self._mine(), runs.c.idempotency_key == key)
        ).first()
        return dict(found._mapping) if found is not None else None

    def prepare_finished(self, row: Mapping[str, Any]) -> tuple[Any, list[str]]:
        """A finished `/invoke` run's row as the driver's parameters for the flush's insert,
        and the JSON columns left out of it: a value JSON cannot carry (an integer beyond
        64 bits, say) must not reach a transaction shared with other records, so such a
        column is stored as null (`request`: a note) and `error` says what was left out.
        """
        values: dict[str, Any] = {}
        omitted: list[str] = []
        for name in FINISHED_COLUMNS:
            value = row[name]
            if name in _JSON_COLUMNS and value is not None:
                try:
                    value = _json_serializer(value)
                except TypeError as exc:  # orjson.JSONEncodeError is one
                    omitted.append(name)
                    reason = f"{name} could not be stored as JSON: {exc}"
                    value = _json_serializer({"omitted": reason}) if name == "request" else None
            values[name] = value
        if omitted:
            note = {"type": "record_incomplete",
                    "message": f"not stored, JSON cannot carry their values: {', '.join(omitted)}"}  # fmt: skip
            if values["error"] is None or "error" in omitted:
                values["error"] = _json_serializer(note)
        if self._insert_order is None:
            return values, omitted
        return tuple(values[name] for name in self._insert_order), omitted

    def write_batch(
        self,
        finished: Sequence[Any],
        new_events: Sequence[NewEvent],
        progress: Mapping[str, Mapping[str, Any]],
        now: float,
    ) -> None:
        """One transaction for what the write-behind buffer holds: finished `/invoke` runs
        (as `prepare_finished` made them), events of running runs, and their step records
        (so other replicas can show them). Writing the same batch twice writes it once."""
        if not (finished or new_events or progress):
            return
        with self._write() as conn:
            if finished:
                conn.exec_driver_sql(self._insert_finished, list(finished))
            if new_events:
                self._append_events(conn, new_events)
            for run_id, steps in progress.items():
                conn.execute(
                    runs.update()
                    .where(runs.c.run_id == run_id, runs.c.status == "running")
                    .values(steps=dict(steps), updated_at=now)
                )

    @staticmethod
    def _insert_events(conn: Connection, new: Iterable[NewEvent]) -> None:
        conn.execute(
            events.insert(),
            [
                {"run_id": e.run_id, "event_id": e.event_id, "kind": e.kind, "data": dict(e.data),
                 "at": e.at}
                for e in new
            ],
        )  # fmt: skip

    def _append_events(self, conn: Connection, new: Sequence[NewEvent]) -> list[NewEvent]:
        """Insert a run's own events, numbered by its process, safe against the race with
        lease recovery (another process, or this one after an outage, may have written an
        event of the same run meanwhile, numbered after the last it saw).

        An event already stored as it is (a batch written twice) is skipped; from the first
        one whose number another event took, this run's events are numbered after the last
        stored one, in their order. Ids stay unique and the stream tells what happened in
        the order it was written. Returns the events as stored."""
        by_run: dict[str, list[NewEvent]] = {}
        for event in new:
            by_run.setdefault(event.run_id, []).append(event)
        # The run rows serialize writers of their events (recovery updates them too);
        # in one order, so that two writers never wait on each other.
        conn.execute(
            sa.select(runs.c.run_id)
            .where(runs.c.run_id.in_(sorted(by_run)))
            .order_by(runs.c.run_id)
            .with_for_update()
        ).all()
        taken = conn.execute(
            sa.select(events.c.run_id, events.c.event_id, events.c.kind, events.c.at,
                      events.c.data).where(
                sa.or_(
                    *(
                        sa.and_(
                            events.c.run_id == run_id,
                            events.c.event_id >= min(e.event_id for e in mine),
                        )
                        for run_id, mine in by_run.items()
                    )
                )
            )
        ).all()  # fmt: skip
        stored: dict[str, dict[int, tuple[str, float, Any]]] = {}
        for row in taken:
            stored.setdefault(row.run_id, {})[row.event_id] = _identity(row.kind, row.at, row.data)
        written: list[NewEvent] = []
        for run_id, mine in by_run.items():
            existing = stored.get(run_id, {})
            already = set(existing.values())
            renumber_from: int | None = None
            for event in mine:
                if _identity(event.kind, event.at, event.data) in already:
                    continue
                if renumber_from is None:
                    if event.event_id not in existing:
                        written.append(event)
                        continue
                    renumber_from = max(existing) + 1
                    logger.warning(
                        "events of a run were written meanwhile by another process; "
                        "numbering this process's after them",
                        extra={"run_id": run_id, "event_id": event.event_id},
                    )
                written.append(replace(event, event_id=renumber_from))
                renumber_from += 1
        if written:
            self._insert_events(conn, written)
        return written

    def claim_next(self, owner: str, now: float, lease: float) -> dict[str, Any] | None:
        """Take the oldest queued run: it becomes `running`, owned by `owner` until `now + lease`."""
        oldest = (
            sa.select(runs.c.seq)
            .where(self._mine(), runs.c.status == "queued")
            .order_by(runs.c.seq)
            .limit(1)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        with self._write() as conn:
            claimed = conn.execute(
                runs.update()
                .where(runs.c.seq == oldest, runs.c.status == "queued")
                .values(
                    status="running",
                    owner=owner,
                    lease_expires_at=now + lease,
                    started_at=now,
                    updated_at=now,
                    attempt=runs.c.attempt + 1,
                    recovered_at=None,
                )
                .returning(*runs.c)
            ).first()
            if claimed is None:
                return None
            row = dict(claimed._mapping)
            row["next_event_id"] = self._next_event_id(conn, row["run_id"])
            return row

    def renew_leases(
        self, owner: str, run_ids: Sequence[str], now: float, lease: float
    ) -> tuple[set[str], set[str]]:
        """Extend the leases of our running runs. Returns (cancel requested, lost): runs a
        caller asked to cancel, and runs that are no longer ours (requeued or taken over
        after a stall). A run that lease recovery failed meanwhile is still ours: its own
        end, when it comes, replaces that guess (see `finish`)."""
        if not run_ids:
            return set(), set()
        with self._write() as conn:
            conn.execute(
                runs.update()
                .where(
                    runs.c.run_id.in_(run_ids), runs.c.owner == owner, runs.c.status == "running"
                )
                .values(lease_expires_at=now + lease)
            )
            found = conn.execute(
                sa.select(
                    runs.c.run_id, runs.c.owner, runs.c.status, runs.c.cancel_requested
                ).where(runs.c.run_id.in_(run_ids))
            ).all()
        cancel = {r.run_id for r in found if r.cancel_requested}
        ours = {r.run_id for r in found if r.owner == owner and r.status in ("running", "failed")}
        return cancel, set(run_ids) - ours

    def finish(
        self,
        run_id: str,
        owner: str | None,
        values: dict[str, Any],
        event: NewEvent,
        attempt: int | None = None,
    ) -> bool:
        """Record a run's end and its terminal event, if it is still ours (or still queued).

        The run's own end wins over lease recovery's guess: a run that recovery failed as
        `interrupted`, or requeued without anyone claiming it since, while its process was
        cut off from the database (`attempt` is still the one that process claimed), is
        recorded as it really ended; the event stream shows the guess, then the end."""
        with self._write() as conn:
            where: list[Any] = [runs.c.run_id == run_id]
            if owner is None:
                where.append(runs.c.status.in_(ACTIVE))
            else:
                mine = sa.and_(runs.c.owner == owner, runs.c.status == "running")
                if attempt is not None:
                    mine = sa.or_(
                        mine,
                        sa.and_(
                            runs.c.attempt == attempt,
                            sa.or_(
                                sa.and_(runs.c.owner == owner, runs.c.status == "failed"),
                                sa.and_(runs.c.owner.is_(None), runs.c.status == "queued"),
                            ),
                            runs.c.recovered_at.is_not(None),
                        ),
                    )
                where.append(mine)
            done = conn.execute(
                runs.update().where(*where).values(**values, owner=owner, recovered_at=None)
            ).rowcount
            if done:
                self._append_events(conn, [event])
            return bool(done)

    def cancel_queued(self, run_id: str, now: float, webhook: bool) -> bool:
        """Cancel a run that no replica has claimed yet; False if it is not queued."""
        with self._write() as conn:
            done = conn.execute(
                runs.update()
                .where(self._mine(), runs.c.run_id == run_id, runs.c.status == "queued")
                .values(
                    status="cancelled",
                    cancel_requested=True,
                    finished_at=now,
                    updated_at=now,
                    **webhook_due(now, webhook),
                )
            ).rowcount
            if done:
                event_id = self._next_event_id(conn, run_id)
                self._insert_events(
                    conn,
                    [NewEvent(run_id, event_id, "cancelled",
                              {"run_id": run_id, "status": "cancelled", "at": now}, now)],
                )  # fmt: skip
            return bool(done)

    def request_cancel(self, run_id: str, now: float) -> bool:
        with self._write() as conn:
            return bool(
                conn.execute(
                    runs.update()
                    .where(self._mine(), runs.c.run_id == run_id, runs.c.status == "running")
                    .values(cancel_requested=True, updated_at=now)
                ).rowcount
            )

    def recover_expired(self, now: float, requeue: bool, owner: str) -> tuple[list[str], list[str]]:
        """Runs whose owner stopped renewing its lease (it died): requeue them when the
        pipeline is safe to retry, otherwise fail them as `interrupted`. Never the runs of
        `owner` (the caller): it is alive, so a lease of its that expired means only that
        the database was out of its reach, and it goes on with the run.
        Returns (requeued, failed) run ids."""
        requeued: list[str] = []
        failed: list[str] = []
        with self._write() as conn:
            expired = conn.execute(
                sa.select(runs.c.run_id, runs.c.started_at, runs.c.webhook_url, runs.c.steps)
                .where(
                    self._mine(),
                    runs.c.status == "running",
                    runs.c.lease_expires_at < now,
                    sa.or_(runs.c.owner.is_(None), runs.c.owner != owner),
                )
                .with_for_update(skip_locked=True)
            ).all()
            for row in expired:
                if requeue:
                    self._requeue(conn, row.run_id, now, recovered=True)
                    requeued.append(row.run_id)
                    continue
                values = interrupted_values(now, row.started_at, row.steps, bool(row.webhook_url))
                conn.execute(
                    runs.update()
                    .where(runs.c.run_id == row.run_id)
                    .values(**values, recovered_at=now)
                )
                event_id = self._next_event_id(conn, row.run_id)
                data = {"run_id": row.run_id, "status": "failed", "error": values["error"],
                        "at": now}  # fmt: skip
                self._insert_events(conn, [NewEvent(row.run_id, event_id, "failed", data, now)])
                failed.append(row.run_id)
        return requeued, failed

    def release(self, run_id: str, owner: str, now: float) -> bool:
        """Put a run we own back in the queue (shutdown of a pipeline safe to retry)."""
        with self._write() as conn:
            return self._requeue(conn, run_id, now, owner)

    def _requeue(
        self,
        conn: Connection,
        run_id: str,
        now: float,
        owner: str | None = None,
        recovered: bool = False,
    ) -> bool:
        """Back to `queued`, as if never started, with a `queued` event saying so."""
        where = [runs.c.run_id == run_id, runs.c.status == "running"]
        if owner is not None:
            where.append(runs.c.owner == owner)
        done = conn.execute(
            runs.update()
            .where(*where)
            .values(status="queued", owner=None, lease_expires_at=None, started_at=None,
                    steps=None, updated_at=now, recovered_at=now if recovered else None)
        ).rowcount  # fmt: skip
        if done:
            data = {"run_id": run_id, "status": "queued", "requeued": True, "at": now}
            event = NewEvent(run_id, self._next_event_id(conn, run_id), "queued", data, now)
            self._insert_events(conn, [event])
        return bool(done)

    # -- webhooks -------------------------------------------------------------------

    def claim_webhooks(self, now: float, hold: float, limit: int = 20) -> list[dict[str, Any]]:
        """Terminal runs with a webhook due; each is held for `hold` seconds so that no other
        replica delivers it meanwhile."""
        with self._write() as conn:
            due = conn.execute(
                sa.select(runs)
                .where(
                    self._mine(),
                    runs.c.webhook_status == "pending",
                    runs.c.webhook_next_at <= now,
                )
                .order_by(runs.c.webhook_next_at)
                .limit(limit)
                .with_for_update(skip_locked=True)
            ).all()
            if due:
                conn.execute(
                    runs.update()
                    .where(runs.c.run_id.in_([r.run_id for r in due]))
                    .values(webhook_next_at=now + hold)
                )
        return [dict(r._mapping) for r in due]

    def record_webhook(
        self, run_id: str, attempts: list[dict[str, Any]], status: str, next_at: float | None
    ) -> None:
        with self._write() as conn:
            conn.execute(
                runs.update()
                .where(runs.c.run_id == run_id)
                .values(webhook_attempts=attempts, webhook_status=status, webhook_next_at=next_at)
            )

    # -- retention ------------------------------------------------------------------

    def prune_cutoff(self, keep: int) -> int | None:
        """The `seq` of the newest finished run beyond the newest `keep`, if there is one."""
        with self._read() as conn:
            seq = conn.execute(
                sa.select(runs.c.seq)
                .where(self._mine(), runs.c.status.in_(TERMINAL))
                .order_by(runs.c.seq.desc())
                .offset(keep)
                .limit(1)
            ).scalar()
        return int(seq) if seq is not None else None

    def prune(self, finished_before: float, cutoff: int | None) -> int:
        """Delete at most `PRUNE_BATCH` finished runs older than `finished_before` or not
        newer than `cutoff` (see `prune_cutoff`), in one transaction; returns how many.

        A caller deletes many in batches, pausing between them (`RunManager`): one delete
        of 30,000 runs held the store for seconds (a submit and the flush waited it out),
        and SQLite took 20 MiB for it, which the malloc arena kept (`bench/README.md`)."""
        condition: Any = runs.c.finished_at < finished_before
        if cutoff is not None:
            condition = sa.or_(condition, runs.c.seq <= cutoff)
        doomed = (
            sa.select(runs.c.run_id)
            .where(self._mine(), runs.c.status.in_(TERMINAL), condition,
                   sa.or_(runs.c.webhook_status.is_(None), runs.c.webhook_status != "pending"))
            # In no order: sorting every doomed run would cost what the batches save.
            .limit(PRUNE_BATCH)
        )  # fmt: skip
        with self._write() as conn:
            batch = list(conn.execute(doomed).scalars())
            if not batch:
                return 0
            # Padded with an id no run has: each length of an IN list is a statement of
            # its own in the driver's statement cache (SQLite: 128, ~60 KiB each at this
            # length), and the last, partial batch of each pruning added two.
            ids = batch + [""] * (PRUNE_BATCH - len(batch))
            conn.execute(events.delete().where(events.c.run_id.in_(ids)))
            return int(conn.execute(runs.delete().where(runs.c.run_id.in_(ids))).rowcount)

    # -- reads ----------------------------------------------------------------------

    def get(self, run_id: str) -> dict[str, Any] | None:
        with self._read() as conn:
            found = conn.execute(
                sa.select(runs).where(self._mine(), runs.c.run_id == run_id)
            ).first()
        return dict(found._mapping) if found is not None else None

    def list_runs(
        self, status: str | None, limit: int, before: tuple[float, int] | None
    ) -> list[dict[str, Any]]:
        """Newest first by creation (`/invoke` runs are written behind, so not by `seq`);
        `before` is the (created_at, seq) of the last run of the previous page."""
        query = sa.select(*_SUMMARY).where(self._mine())
        if status is not None:
            query = query.where(runs.c.status == status)
        if before is not None:
            created, seq = before
            query = query.where(
                sa.or_(
                    runs.c.created_at < created,
                    sa.and_(runs.c.created_at == created, runs.c.seq < seq),
                )
            )
        query = query.order_by(runs.c.created_at.desc(), runs.c.seq.desc()).limit(limit)
        with self._read() as conn:
            return [dict(r._mapping) for r in conn.execute(query).all()]

    def events_after(self, run_id: str, after: int) -> list[NewEvent]:
        with self._read() as conn:
            found = conn.execute(
                sa.select(events)
                .where(events.c.run_id == run_id, events.c.event_id > after)
                .order_by(events.c.event_id)
            ).all()
        return [NewEvent(r.run_id, r.event_id, r.kind, r.data, r.at) for r in found]

    @staticmethod
    def _next_event_id(conn: Connection, run_id: str) -> int:
        last = conn.execute(
            sa.select(sa.func.max(events.c.event_id)).where(events.c.run_id == run_id)
        ).scalar()
        return int(last or 0) + 1


def _identity(kind: str, at: float, data: Mapping[str, Any]) -> tuple[str, float, Any]:
    """What tells two events of one run apart, whatever their ids: a batch written twice
    (its first commit went through, the answer was lost) finds its events by it."""
    return kind, at, data.get("step")


def webhook_due(now: float, webhook: bool) -> dict[str, Any]:
    """The columns that put a run's webhook in the outbox, due now (if it has one)."""
    return {"webhook_status": "pending" if webhook else None,
            "webhook_next_at": now if webhook else None}  # fmt: skip


def interrupted_values(
    now: float, started_at: float | None, steps: Any, webhook: bool
) -> dict[str, Any]:
    """How a run ends whose process stopped under it: failed, `interrupted`, the steps
    that were running failed with it."""
    if isinstance(steps, dict):
        steps = {
            name: {**record, "status": "failed"} if record.get("status") == "running" else record
            for name, record in steps.items()
        }
    return {
        "status": "failed",
        "error": {
            "type": "interrupted",
            "message": "the server running this run stopped before it finished",
        },
        "outputs": None,
        "finished_at": now,
        "updated_at": now,
        "duration": now - started_at if started_at else None,
        "steps": steps,
        **webhook_due(now, webhook),
    }


def request_hash(document: Any) -> str:
    return hashlib.sha256(orjson.dumps(document, option=orjson.OPT_SORT_KEYS)).hexdigest()


# An arbitrary constant: the PostgreSQL advisory lock that serializes migrations.
_LOCK_KEY = 0x70697065  # "pipe"


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


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


def _insert_statement(is_sqlite: bool, table: sa.Table) -> Any:
    """An INSERT that can say ON CONFLICT DO NOTHING, in this database's dialect."""
    if is_sqlite:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table)
    from sqlalchemy.dialects.postgresql import insert as postgresql_insert

    return postgresql_insert(table)
