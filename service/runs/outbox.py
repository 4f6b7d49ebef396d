"""The webhook outbox: delivering the webhooks of ended runs, from any replica.

A run that ends with a webhook is `pending` in the store; whichever replica claims it
next delivers it, so a delivery survives a crash. A failed attempt is retried with
exponential backoff up to `webhook_max_attempts`; every attempt is recorded on the run.
"""

from __future__ import annotations

import asyncio
import logging
import time

from service.runs.calls import StoreCalls
from service.runs.model import Run
from service.runs.records import render
from service.runs.store import RunStore
from service.runs.tasks import BackgroundTasks
from service.runs.waiting import forever, wait_and_clear
from service.runs.webhooks import WebhookSender, backoff
from service.sdk.serialize import dumps
from service.settings import Settings
from service.status import WebhookStatus

logger = logging.getLogger("pipeserve.runs")


class WebhookOutbox:
    def __init__(
        self,
        settings: Settings,
        sender: WebhookSender,
        store: RunStore,
        calls: StoreCalls,
        tasks: BackgroundTasks,
    ) -> None:
        self.settings = settings
        self.sender = sender
        self.store = store
        self.calls = calls
        self.tasks = tasks
        self._due = asyncio.Event()

    def wake(self) -> None:
        """A webhook is due: look now, not at the next poll."""
        self._due.set()

    async def run(self) -> None:
        """Claim the webhooks due, every `poll_interval` or when woken, and deliver each."""
        await forever(
            self.deliver_due,
            lambda: wait_and_clear(self._due, self.settings.poll_interval),
            "claiming webhooks to deliver failed; will retry",
        )

    async def deliver_due(self) -> None:
        # Held long enough for a delivery with its timeout; then another replica may try.
        hold = self.settings.webhook_timeout * 2 + 5
        for run in await self.calls.call(self.store.claim_webhooks, time.time(), hold):
            self.tasks.spawn(self._deliver(run))

    async def _deliver(self, run: Run) -> None:
        assert run.webhook_url is not None
        attempts = list(run.webhook_attempts or [])
        attempt = len(attempts) + 1
        outcome = await self.sender.send(
            run.webhook_url,
            dumps(render(run)),
            event=f"run.{run.status}",
            delivery=f"{run.run_id}.{attempt}",
            attempt=attempt,
        )
        attempts.append(outcome.as_record())
        next_at: float | None = None
        status: WebhookStatus
        if outcome.delivered:
            status = "delivered"
        elif attempt >= self.settings.webhook_max_attempts:
            status = "failed"
            logger.warning(
                "webhook delivery failed for good",
                extra={"run_id": run.run_id, "attempts": attempt, "error": outcome.error},
            )
        else:
            status = "pending"
            wait = backoff(attempt)
            next_at = time.time() + wait
            asyncio.get_running_loop().call_later(wait, self._due.set)
        await self.calls.call(self.store.record_webhook, run.run_id, attempts, status, next_at)

    async def close(self) -> None:
        await self.sender.close()
