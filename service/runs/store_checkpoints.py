"""Step checkpoints in the store: written with their `step_finished` event (by the flush,
`store_batches`), read back by a resumed run, copied to a run that retries another, and
deleted with their run.

A checkpoint in the object store is a row with a `location`; several rows may share one
(a retry's copy), so an object is deleted only once no row names it any more."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import fields
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from service.runs.database import Database, insert_statement
from service.runs.model import Checkpoint
from service.runs.tables import checkpoints

_COLUMNS = tuple(f.name for f in fields(Checkpoint))


def insert_checkpoints(conn: Connection, rows: Sequence[Checkpoint], is_sqlite: bool) -> None:
    """Insert, or replace a checkpoint of an earlier attempt (one that could not be
    restored, so its step ran again); a flush retried after a lost commit answer writes
    nothing twice."""
    if not rows:
        return
    insert = insert_statement(is_sqlite, checkpoints)
    replaced = [c.name for c in checkpoints.c if c.name not in ("run_id", "step")]
    conn.execute(
        insert.on_conflict_do_update(
            index_elements=["run_id", "step"],
            set_={name: insert.excluded[name] for name in replaced},
            where=checkpoints.c.attempt < insert.excluded.attempt,
        ),
        [{name: getattr(row, name) for name in _COLUMNS} for row in rows],
    )


def copy_checkpoints(
    conn: Connection, source: str, target: str, steps: Collection[str], created_at: float
) -> None:
    """Give run `target` the checkpoints of run `source` for `steps` (a retry's)."""
    if not steps:
        return
    copied = [c for c in checkpoints.c if c.name not in ("run_id", "created_at")]
    conn.execute(
        checkpoints.insert().from_select(
            ["run_id", "created_at", *(c.name for c in copied)],
            sa.select(sa.literal(target), sa.literal(created_at), *copied).where(
                checkpoints.c.run_id == source, checkpoints.c.step.in_(list(steps))
            ),
        )
    )


def delete_checkpoints(conn: Connection, run_ids: Sequence[str]) -> list[str]:
    """Delete the checkpoints of runs; returns the object store locations no row names
    any more (for the caller to delete once this transaction commits)."""
    located = set(
        conn.execute(
            sa.select(checkpoints.c.location).where(
                checkpoints.c.run_id.in_(run_ids), checkpoints.c.location.is_not(None)
            )
        ).scalars()
    )
    conn.execute(checkpoints.delete().where(checkpoints.c.run_id.in_(run_ids)))
    if not located:
        return []
    still = set(
        conn.execute(
            sa.select(checkpoints.c.location).where(checkpoints.c.location.in_(located))
        ).scalars()
    )
    return sorted(located - still)


class CheckpointQueries(Database):
    def checkpoints(self, run_id: str) -> list[Checkpoint]:
        """A run's checkpoints, with their bytes (those in the database)."""
        with self._read() as conn:
            rows = conn.execute(sa.select(checkpoints).where(checkpoints.c.run_id == run_id)).all()
        return [Checkpoint(**_as_checkpoint(row._asdict())) for row in rows]

    def checkpoint_summaries(self, run_id: str) -> dict[str, dict[str, Any]]:
        """What a run's checkpoints are, without their bytes: step to attempt, version,
        formats, size."""
        with self._read() as conn:
            rows = conn.execute(
                sa.select(
                    checkpoints.c.step,
                    checkpoints.c.attempt,
                    checkpoints.c.formats,
                    checkpoints.c.sizes,
                    checkpoints.c.pipeline_version,
                ).where(checkpoints.c.run_id == run_id)
            ).all()
        return {
            row.step: {
                "attempt": row.attempt,
                "pipeline_version": row.pipeline_version,
                "formats": list(row.formats),
                "bytes": sum(row.sizes),
            }
            for row in rows
        }

    def forget_checkpoints(self, run_id: str) -> list[str]:
        """Delete a run's checkpoints (it starts over); returns orphaned object locations."""
        with self._write() as conn:
            return delete_checkpoints(conn, [run_id])


def _as_checkpoint(row: dict[str, Any]) -> dict[str, Any]:
    data = row["data"]
    # psycopg reads BYTEA as a memoryview.
    return {**row, "data": bytes(data) if data is not None else None}
