"""The queue of batch runs in the store: submitting (at most `max_queued` waiting, once
per idempotency key), claiming the oldest for a process, and cancelling."""

from __future__ import annotations

from collections.abc import Collection

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from service.errors import PipeserveError
from service.runs import event_log
from service.runs.database import Database
from service.runs.model import Claim, NewEvent, Run
from service.runs.store_checkpoints import copy_checkpoints
from service.runs.store_outbox import webhook_due
from service.runs.tables import inserted, run_of, runs


class QueueFull(PipeserveError):
    """As many runs are queued as the settings allow."""

    def __init__(self, queued: int) -> None:
        super().__init__(f"{queued} runs are queued")
        self.queued = queued


class QueueQueries(Database):
    def submit(
        self,
        run: Run,
        first_event: NewEvent,
        max_queued: int,
        reuse: tuple[str, Collection[str]] | None = None,
    ) -> tuple[Run, bool]:
        """Insert a queued run with its first event, unless `max_queued` runs wait already
        (`QueueFull`). With an idempotency key already used, return that run instead.
        `reuse`: (a run, its steps) whose checkpoints the new run takes (a retry's).
        Returns (run, created)."""
        key = run.idempotency_key
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
                conn.execute(runs.insert().values(**inserted(run)))
                event_log.insert(conn, [first_event])
                if reuse is not None:
                    copy_checkpoints(conn, reuse[0], run.run_id, reuse[1], run.created_at)
        except sa.exc.IntegrityError:
            # Another replica inserted the same key between our look and our insert.
            with self._read() as conn:
                existing = self._by_idempotency_key(conn, key)
            if existing is None:
                raise
            return existing, False
        return run, True

    def _by_idempotency_key(self, conn: Connection, key: str | None) -> Run | None:
        found = conn.execute(
            sa.select(runs).where(self._mine(), runs.c.idempotency_key == key)
        ).first()
        return run_of(found) if found is not None else None

    def claim_next(self, owner: str, now: float, lease: float) -> Claim | None:
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
            run = run_of(claimed)
            return Claim(run, event_log.next_id(conn, run.run_id))

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
                data = {"run_id": run_id, "status": "cancelled", "at": now}
                event_log.event(conn, run_id, "cancelled", data, now)
            return bool(done)

    def request_cancel(self, run_id: str, now: float) -> bool:
        """Ask the process running a run to stop it: it sees this at its next heartbeat."""
        with self._write() as conn:
            return bool(
                conn.execute(
                    runs.update()
                    .where(self._mine(), runs.c.run_id == run_id, runs.c.status == "running")
                    .values(cancel_requested=True, updated_at=now)
                ).rowcount
            )
