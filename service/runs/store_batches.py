"""The write-behind flush in the store: finished `/invoke` runs by the hundred, events of
running batch runs and their step records, in one transaction that is safe to repeat."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import Any

import sqlalchemy as sa

from service.runs import event_log
from service.runs.database import Database, insert_statement, json_serializer
from service.runs.model import FINISHED_COLUMNS, Checkpoint, FinishedRun, NewEvent, Steps
from service.runs.store_checkpoints import insert_checkpoints
from service.runs.tables import JSON_COLUMNS, runs


class BatchWrites(Database):
    @cached_property
    def _insert_finished(self) -> tuple[str, tuple[str, ...] | None]:
        """The insert of finished runs, compiled once for this database, and the order of
        its parameters (None: by name). Executed as the driver's executemany, without
        SQLAlchemy's per-row parameter processing (most of the flush's CPU otherwise).
        Insert-if-absent: a batch retried after a commit whose answer was lost (the
        connection dropped) must not fail on the rows it already wrote."""
        compiled = (
            insert_statement(self.is_sqlite, runs)
            .values({name: sa.bindparam(name) for name in FINISHED_COLUMNS})
            .on_conflict_do_nothing(index_elements=["run_id"])
            .compile(dialect=self.engine.dialect)
        )
        order = compiled.positiontup if compiled.positional else None
        return compiled.string, tuple(order) if order is not None else None

    def prepare_finished(self, run: FinishedRun) -> tuple[Any, list[str]]:
        """A finished `/invoke` run as the driver's parameters for the flush's insert,
        and the JSON columns left out of it: a value JSON cannot carry (an integer beyond
        64 bits, say) must not reach a transaction shared with other records, so such a
        column is stored as null (`request`: a note) and `error` says what was left out.
        """
        columns: Mapping[str, Any] = run
        values: dict[str, Any] = {}
        omitted: list[str] = []
        for name in FINISHED_COLUMNS:
            value = columns[name]
            if name in JSON_COLUMNS and value is not None:
                try:
                    value = json_serializer(value)
                except TypeError as exc:  # orjson.JSONEncodeError is one
                    omitted.append(name)
                    reason = f"{name} could not be stored as JSON: {exc}"
                    value = json_serializer({"omitted": reason}) if name == "request" else None
            values[name] = value
        if omitted:
            note = {"type": "record_incomplete",
                    "message": f"not stored, JSON cannot carry their values: {', '.join(omitted)}"}  # fmt: skip
            if values["error"] is None or "error" in omitted:
                values["error"] = json_serializer(note)
        order = self._insert_finished[1]
        if order is None:
            return values, omitted
        return tuple(values[name] for name in order), omitted

    def write_batch(
        self,
        finished: Sequence[Any],
        new_events: Sequence[NewEvent],
        progress: Mapping[str, Steps],
        now: float,
        saved: Sequence[Checkpoint] = (),
    ) -> None:
        """One transaction for what the write-behind buffer holds: finished `/invoke` runs
        (as `prepare_finished` made them), events of running runs, their step records
        (so other replicas can show them), and the checkpoints of finished steps, with
        their `step_finished` events. Writing the same batch twice writes it once."""
        if not (finished or new_events or progress or saved):
            return
        with self._write() as conn:
            if finished:
                conn.exec_driver_sql(self._insert_finished[0], list(finished))
            insert_checkpoints(conn, saved, self.is_sqlite)
            if new_events:
                event_log.append(conn, new_events)
            for run_id, steps in progress.items():
                conn.execute(
                    runs.update()
                    .where(runs.c.run_id == run_id, runs.c.status == "running")
                    .values(steps=dict(steps), updated_at=now)
                )
