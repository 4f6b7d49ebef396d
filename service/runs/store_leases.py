"""The leases of running runs in the store: renewing them, ending a run that is still
ours, and recovering the runs whose process stopped renewing (it died): requeued when the
pipeline resumes or is safe to retry (up to `max_attempts` times), else failed as
`interrupted`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from service.runs import event_log
from service.runs.database import Database
from service.runs.model import NewEvent, RunEnd, Steps
from service.runs.store_outbox import webhook_due
from service.runs.tables import runs


def interrupted_values(
    now: float, started_at: float | None, steps: Steps | None, webhook: bool
) -> RunEnd:
    """How a run ends whose process stopped under it: failed, `interrupted`, the steps
    that were running failed with it."""
    if isinstance(steps, dict):
        steps = {
            name: {**record, "status": "failed"} if record.get("status") == "running" else record
            for name, record in steps.items()
        }
    end: RunEnd = {
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
    }
    return {**end, **webhook_due(now, webhook)}


class LeaseQueries(Database):
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
        owner: str,
        values: RunEnd,
        event: NewEvent,
        attempt: int | None = None,
    ) -> bool:
        """Record a run's end and its terminal event, if it is still ours.

        The run's own end wins over lease recovery's guess: a run that recovery failed as
        `interrupted`, or requeued without anyone claiming it since, while its process was
        cut off from the database (`attempt` is still the one that process claimed), is
        recorded as it really ended; the event stream shows the guess, then the end."""
        with self._write() as conn:
            done = conn.execute(
                runs.update()
                .where(runs.c.run_id == run_id, _still_ours(owner, attempt))
                .values(**values, owner=owner, recovered_at=None)
            ).rowcount
            if done:
                event_log.append(conn, [event])
            return bool(done)

    def recover_expired(
        self, now: float, requeue: bool, owner: str, max_attempts: int = 3
    ) -> tuple[list[str], list[str]]:
        """Runs whose owner stopped renewing its lease (it died): requeue them when the
        pipeline resumes or is safe to retry, unless they were interrupted `max_attempts`
        times already (`too_many_attempts`); otherwise fail them as `interrupted`. Never
        the runs of `owner` (the caller): it is alive, so a lease of its that expired
        means only that the database was out of its reach, and it goes on with the run.
        Returns (requeued, failed) run ids."""
        requeued: list[str] = []
        failed: list[str] = []
        with self._write() as conn:
            expired = conn.execute(
                sa.select(*_ATTEMPT_COLUMNS)
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
                    done = _requeue_or_give_up(conn, row, now, max_attempts, "lease_expired")
                    (requeued if done == "requeued" else failed).append(row.run_id)
                    continue
                values = interrupted_values(now, row.started_at, row.steps, bool(row.webhook_url))
                _fail(conn, row.run_id, values, now, recovered=True)
                failed.append(row.run_id)
        return requeued, failed

    def release(self, run_id: str, owner: str, now: float, max_attempts: int = 3) -> str:
        """Put a run we own back in the queue (shutdown, of a pipeline that resumes or is
        safe to retry), unless it was interrupted `max_attempts` times: then fail it.
        Returns "requeued", "failed", or "" (it is not ours any more)."""
        with self._write() as conn:
            row = conn.execute(
                sa.select(*_ATTEMPT_COLUMNS)
                .where(runs.c.run_id == run_id, runs.c.owner == owner, runs.c.status == "running")
                # Held to the end: no other replica requeues or claims it in between.
                .with_for_update()
            ).first()
            if row is None:
                return ""
            return _requeue_or_give_up(conn, row, now, max_attempts, "drained", owner)


# What requeueing a run reads of it: its current attempt, for the history of attempts.
_ATTEMPT_COLUMNS = (
    runs.c.run_id,
    runs.c.started_at,
    runs.c.webhook_url,
    runs.c.steps,
    runs.c.attempt,
    runs.c.owner,
    runs.c.attempts,
)


def version_changed(others: Sequence[str], version: str, now: float) -> RunEnd:
    """How a run ends that another version of its pipeline checkpointed: never resumed
    with the outputs of two versions mixed."""
    return {
        "status": "failed",
        "error": {
            "type": "version_changed",
            "message": f"the run's checkpoints were made by pipeline version "
            f"{', '.join(others)}; this server runs version {version}, and does not mix "
            "their outputs (with @pipeline(on_version_change='restart') it starts over)",
            "versions": {"checkpoints": list(others), "server": version},
        },
        "finished_at": now,
        "updated_at": now,
        "duration": 0.0,
        "steps": None,
    }


def _requeue_or_give_up(
    conn: Connection, row: Any, now: float, max_attempts: int, reason: str,
    owner: str | None = None,
) -> str:  # fmt: skip
    """Requeue an interrupted run, its attempt added to its history; or, interrupted
    `max_attempts` times, fail it as `too_many_attempts` with that history."""
    history = [*(row.attempts or []), {"attempt": row.attempt, "owner": row.owner,
               "started_at": row.started_at, "ended_at": now, "reason": reason}]  # fmt: skip
    conn.execute(runs.update().where(runs.c.run_id == row.run_id).values(attempts=history))
    if row.attempt < max_attempts:
        return "requeued" if _requeue(conn, row.run_id, now, owner) else ""
    values = interrupted_values(now, row.started_at, row.steps, bool(row.webhook_url))
    values["error"] = {
        "type": "too_many_attempts",
        "message": f"the run was interrupted {len(history)} times (max_attempts="
        f"{max_attempts}): it is not run again",
        "attempts": history,
    }
    _fail(conn, row.run_id, values, now, recovered=owner is None)
    return "failed"


def _fail(conn: Connection, run_id: str, values: RunEnd, now: float, recovered: bool) -> None:
    """End a run whose process is gone (or going) with a failure, and its event."""
    conn.execute(
        runs.update()
        .where(runs.c.run_id == run_id)
        .values(**values, recovered_at=now if recovered else None)
    )
    data = {"run_id": run_id, "status": "failed", "error": values["error"], "at": now}
    event_log.event(conn, run_id, "failed", data, now)


def _still_ours(owner: str, attempt: int | None) -> Any:
    """The run's row, if the end of this process's attempt at it still counts (`finish`)."""
    mine = sa.and_(runs.c.owner == owner, runs.c.status == "running")
    if attempt is None:
        return mine
    return sa.or_(
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


def _requeue(conn: Connection, run_id: str, now: float, owner: str | None = None) -> bool:
    """Back to `queued`, as if never started, with a `queued` event saying so. By its
    `owner` (`release`), or with none by lease recovery, which marks it `recovered_at`."""
    where = [runs.c.run_id == run_id, runs.c.status == "running"]
    if owner is not None:
        where.append(runs.c.owner == owner)
    done = conn.execute(
        runs.update()
        .where(*where)
        .values(status="queued", owner=None, lease_expires_at=None, started_at=None,
                steps=None, updated_at=now, recovered_at=now if owner is None else None)
    ).rowcount  # fmt: skip
    if done:
        data = {"run_id": run_id, "status": "queued", "requeued": True, "at": now}
        event_log.event(conn, run_id, "queued", data, now)
    return bool(done)
