"""The events of runs in the store, inside a caller's transaction: each run's stream is
numbered from 1, and stays unique and in the order it was written even when two writers
(a run's own process and lease recovery) add to one stream."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from service.runs.model import NewEvent
from service.runs.tables import events, runs

logger = logging.getLogger("pipeserve.runs")

# What tells two events of one run apart, whatever their ids.
_Identity = tuple[str, float, Any]


def insert(conn: Connection, new: Iterable[NewEvent]) -> None:
    """Insert events numbered already (`next_id`), under the run row's lock."""
    conn.execute(
        events.insert(),
        [
            {"run_id": e.run_id, "event_id": e.event_id, "kind": e.kind, "data": dict(e.data),
             "at": e.at}
            for e in new
        ],
    )  # fmt: skip


def next_id(conn: Connection, run_id: str) -> int:
    last = conn.execute(
        sa.select(sa.func.max(events.c.event_id)).where(events.c.run_id == run_id)
    ).scalar()
    return int(last or 0) + 1


def event(conn: Connection, run_id: str, kind: str, data: dict[str, Any], at: float) -> None:
    """Add one event after the run's last, in a transaction that updates the run's row."""
    insert(conn, [NewEvent(run_id, next_id(conn, run_id), kind, data, at)])


def append(conn: Connection, new: Sequence[NewEvent]) -> list[NewEvent]:
    """Insert a run's own events, numbered by its process, safe against the race with
    lease recovery (another process, or this one after an outage, may have written an
    event of the same run meanwhile, numbered after the last it saw).

    An event already stored as it is (a batch written twice) is skipped; from the first
    one whose number another event took, this run's events are numbered after the last
    stored one, in their order. Ids stay unique and the stream tells what happened in
    the order it was written. Returns the events as stored."""
    by_run: dict[str, list[NewEvent]] = {}
    for e in new:
        by_run.setdefault(e.run_id, []).append(e)
    # The run rows serialize writers of their events (recovery updates them too);
    # in one order, so that two writers never wait on each other.
    conn.execute(
        sa.select(runs.c.run_id)
        .where(runs.c.run_id.in_(sorted(by_run)))
        .order_by(runs.c.run_id)
        .with_for_update()
    ).all()
    stored = _stored_from(conn, by_run)
    written: list[NewEvent] = []
    for run_id, mine in by_run.items():
        written += _numbered(run_id, mine, stored.get(run_id, {}))
    if written:
        insert(conn, written)
    return written


def _stored_from(
    conn: Connection, by_run: dict[str, list[NewEvent]]
) -> dict[str, dict[int, _Identity]]:
    """Each run's stored events from the first id of its new ones on, by id."""
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
    stored: dict[str, dict[int, _Identity]] = {}
    for row in taken:
        stored.setdefault(row.run_id, {})[row.event_id] = _identity(row.kind, row.at, row.data)
    return stored


def _numbered(run_id: str, mine: list[NewEvent], existing: dict[int, _Identity]) -> list[NewEvent]:
    """One run's new events as they are to be written (see `append`)."""
    already = set(existing.values())
    written: list[NewEvent] = []
    renumber_from: int | None = None
    for e in mine:
        if _identity(e.kind, e.at, e.data) in already:
            continue
        if renumber_from is None:
            if e.event_id not in existing:
                written.append(e)
                continue
            renumber_from = max(existing) + 1
            logger.warning(
                "events of a run were written meanwhile by another process; "
                "numbering this process's after them",
                extra={"run_id": run_id, "event_id": e.event_id},
            )
        written.append(replace(e, event_id=renumber_from))
        renumber_from += 1
    return written


def _identity(kind: str, at: float, data: Mapping[str, Any]) -> _Identity:
    """A batch written twice (its first commit went through, the answer was lost) finds
    its events by it."""
    return kind, at, data.get("step")
