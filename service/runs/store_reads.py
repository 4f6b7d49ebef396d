"""Reading runs from the store: one run, a page of runs newest first, a run's events."""

from __future__ import annotations

import sqlalchemy as sa

from service.runs.database import Database
from service.runs.model import NewEvent, Run
from service.runs.tables import SUMMARY, events, run_of, runs


class ReadQueries(Database):
    def get(self, run_id: str) -> Run | None:
        with self._read() as conn:
            found = conn.execute(
                sa.select(runs).where(self._mine(), runs.c.run_id == run_id)
            ).first()
        return run_of(found) if found is not None else None

    def list_runs(
        self, status: str | None, limit: int, before: tuple[float, int] | None
    ) -> list[Run]:
        """Newest first by creation (`/invoke` runs are written behind, so not by `seq`),
        without their outputs; `before` is the (created_at, seq) of the last run of the
        previous page."""
        query = sa.select(*SUMMARY).where(self._mine())
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
            return [run_of(r) for r in conn.execute(query).all()]

    def events_after(self, run_id: str, after: int) -> list[NewEvent]:
        with self._read() as conn:
            found = conn.execute(
                sa.select(events)
                .where(events.c.run_id == run_id, events.c.event_id > after)
                .order_by(events.c.event_id)
            ).all()
        return [NewEvent(r.run_id, r.event_id, r.kind, r.data, r.at) for r in found]
