"""Retention in the store: which finished runs are past `retention_days` or beyond the
newest `retention_max_runs`, deleted with their events and checkpoints a bounded batch
at a time."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from service.runs.database import Database
from service.runs.store_checkpoints import delete_checkpoints
from service.runs.tables import events, runs
from service.status import TERMINAL

# Finished runs one pruning transaction deletes at most.
PRUNE_BATCH = 500


class RetentionQueries(Database):
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

    def prune(self, finished_before: float, cutoff: int | None) -> tuple[int, list[str]]:
        """Delete at most `PRUNE_BATCH` finished runs older than `finished_before` or not
        newer than `cutoff` (see `prune_cutoff`), with their events and checkpoints, in
        one transaction. Returns how many, and the object store locations of checkpoints
        no run names any more (for the caller to delete).

        A caller deletes many in batches, pausing between them (`runs.retention`): one
        delete of 30,000 runs held the store for seconds (a submit and the flush waited it
        out), and SQLite took 20 MiB for it, which the malloc arena kept (`bench/README.md`)."""
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
                return 0, []
            # Padded with an id no run has: each length of an IN list is a statement of
            # its own in the driver's statement cache (SQLite: 128, ~60 KiB each at this
            # length), and the last, partial batch of each pruning added two.
            ids = batch + [""] * (PRUNE_BATCH - len(batch))
            conn.execute(events.delete().where(events.c.run_id.in_(ids)))
            orphaned = delete_checkpoints(conn, ids)
            deleted = int(conn.execute(runs.delete().where(runs.c.run_id.in_(ids))).rowcount)
            return deleted, orphaned
