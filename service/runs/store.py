"""The run store: runs and their events, in SQLite (default) or PostgreSQL, with
SQLAlchemy Core.

`RunStore` is the store of one deployment: its database (`database`) with each family of
queries on it, a module each. The calls are blocking, each a transaction; the run manager
makes them from its own small thread pool, never on the event loop.
"""

from __future__ import annotations

from service.runs.database import StoreError, default_sqlite_url, normalize_url, redact
from service.runs.model import NewEvent
from service.runs.store_batches import BatchWrites
from service.runs.store_checkpoints import CheckpointQueries
from service.runs.store_health import StoreHealth, is_transient
from service.runs.store_leases import LeaseQueries, interrupted_values, version_changed
from service.runs.store_outbox import OutboxQueries, webhook_due
from service.runs.store_queue import QueueFull, QueueQueries
from service.runs.store_reads import ReadQueries
from service.runs.store_retention import PRUNE_BATCH, RetentionQueries
from service.runs.tables import metadata

__all__ = [
    "PRUNE_BATCH",
    "NewEvent",
    "QueueFull",
    "RunStore",
    "StoreError",
    "StoreHealth",
    "default_sqlite_url",
    "interrupted_values",
    "is_transient",
    "metadata",
    "normalize_url",
    "redact",
    "version_changed",
    "webhook_due",
]


class RunStore(
    QueueQueries,
    LeaseQueries,
    BatchWrites,
    CheckpointQueries,
    OutboxQueries,
    RetentionQueries,
    ReadQueries,
):
    """Blocking access to the runs of one deployment: the queue (submit, claim, cancel),
    the leases of running runs and their recovery, the write-behind flush, step
    checkpoints, the webhook outbox, retention, and reads."""
