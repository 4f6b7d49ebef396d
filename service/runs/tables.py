"""The run store's tables, as SQLAlchemy Core defines them: what `migrate` builds a new
database from, and what the migrations in `runs/migrations` must agree with (a test
compares them)."""

from __future__ import annotations

from typing import Any, Final

import sqlalchemy as sa

from service.runs.model import Run

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
    # See `Run.recovered_at`.
    sa.Column("recovered_at", sa.Float),
    # See `Run.attempts`.
    sa.Column("attempts", sa.JSON),
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

# A finished step's outputs, stored by a batch run for its next attempt to restore.
checkpoints = sa.Table(
    "pipeserve_checkpoints",
    metadata,
    sa.Column("run_id", sa.String(36), primary_key=True),
    sa.Column("step", sa.String(255), primary_key=True),
    # The attempt that ran the step, and the version of the pipeline it ran.
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("pipeline_version", sa.String(64), nullable=False),
    # One format and byte size per output (`checkpoint_formats`).
    sa.Column("formats", sa.JSON, nullable=False),
    sa.Column("sizes", sa.JSON, nullable=False),
    # The outputs' bytes; null when they are in the object store at `location`.
    sa.Column("data", sa.LargeBinary),
    sa.Column("location", sa.Text),
    sa.Column("created_at", sa.Float, nullable=False),
    # Retention asks whether any row still names a location before deleting its object.
    sa.Index("ix_pipeserve_checkpoints_location", "location"),
)

JSON_COLUMNS: Final = frozenset(c.name for c in runs.c if isinstance(c.type, sa.JSON))
# What a listing reads of a run: everything but the (possibly large) outputs.
SUMMARY: Final = tuple(c for c in runs.c if c.name != "outputs")
# The columns a new run is inserted with: all but the key the database assigns.
_INSERTED: Final = tuple(c.name for c in runs.c if c.name != "seq")


def run_of(row: sa.Row[Any]) -> Run:
    """A row the store read (all columns, or `SUMMARY`'s), as a run."""
    return Run(**row._asdict())


def inserted(run: Run) -> dict[str, Any]:
    """A run not written yet, as the values of its insert."""
    return {name: getattr(run, name) for name in _INSERTED}
