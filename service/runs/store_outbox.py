"""The webhook outbox in the store: a run that ends with a webhook is `pending` until
delivered, and each delivery is claimed by one replica at a time."""

from __future__ import annotations

from typing import Any, TypedDict

import sqlalchemy as sa

from service.runs.database import Database
from service.runs.model import Run
from service.runs.tables import run_of, runs
from service.status import WebhookStatus


class WebhookDue(TypedDict):
    """The columns that put a run's webhook in the outbox, or keep it out."""

    webhook_status: WebhookStatus | None
    webhook_next_at: float | None


def webhook_due(now: float, webhook: bool) -> WebhookDue:
    """The columns that put a run's webhook in the outbox, due now (if it has one)."""
    return {"webhook_status": "pending" if webhook else None,
            "webhook_next_at": now if webhook else None}  # fmt: skip


class OutboxQueries(Database):
    def claim_webhooks(self, now: float, hold: float, limit: int = 20) -> list[Run]:
        """Terminal runs with a webhook due; each is held for `hold` seconds so that no other
        replica delivers it meanwhile."""
        with self._write() as conn:
            due = conn.execute(
                sa.select(runs)
                .where(
                    self._mine(),
                    runs.c.webhook_status == "pending",
                    runs.c.webhook_next_at <= now,
                )
                .order_by(runs.c.webhook_next_at)
                .limit(limit)
                .with_for_update(skip_locked=True)
            ).all()
            if due:
                conn.execute(
                    runs.update()
                    .where(runs.c.run_id.in_([r.run_id for r in due]))
                    .values(webhook_next_at=now + hold)
                )
        return [run_of(r) for r in due]

    def record_webhook(
        self,
        run_id: str,
        attempts: list[dict[str, Any]],
        status: WebhookStatus,
        next_at: float | None,
    ) -> None:
        with self._write() as conn:
            conn.execute(
                runs.update()
                .where(runs.c.run_id == run_id)
                .values(webhook_attempts=attempts, webhook_status=status, webhook_next_at=next_at)
            )
