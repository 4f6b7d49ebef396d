"""Whether the run store answers: which failures are the database's (transient: tried
again) rather than the data's, and the store's health as `/ready` and the logs show it."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa

logger = logging.getLogger("pipeserve.runs")


def is_transient(exc: BaseException) -> bool:
    """True for a failure of the database, not of the data: lost connections, a server
    that is down or restarting, a locked SQLite file, an exhausted pool. Such a write is
    kept and tried again; any other failure is the record's own and retrying cannot help."""
    if isinstance(exc, sa.exc.DBAPIError):
        return exc.connection_invalidated or isinstance(
            exc, (sa.exc.OperationalError, sa.exc.InterfaceError)
        )
    return isinstance(exc, (sa.exc.TimeoutError, sa.exc.DisconnectionError, ConnectionError))


def first_line(exc: BaseException) -> str:
    """The database's own message, in one line, for logs and errors."""
    text = str(getattr(exc, "orig", None) or exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


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
        self.last_error = first_line(exc)
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
