"""Retention: finished runs past `retention_days`, or beyond the newest
`retention_max_runs`, are deleted every `retention_interval` (never a webhook still due),
with their events and checkpoints."""

from __future__ import annotations

import asyncio
import logging
import time

from service.runs.calls import StoreCalls
from service.runs.checkpoint_objects import ObjectStore
from service.runs.store import PRUNE_BATCH, RunStore
from service.runs.waiting import forever
from service.settings import Settings

logger = logging.getLogger("pipeserve.runs")

# Between two pruning transactions: the store calls queued behind one run before the next.
PRUNE_PAUSE = 0.05


class Retention:
    def __init__(
        self,
        settings: Settings,
        store: RunStore,
        calls: StoreCalls,
        objects: ObjectStore | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.calls = calls
        # Where large checkpoints are (`checkpoint_url`): deleted with their runs.
        self.objects = objects

    async def run(self) -> None:
        """Prune, every `retention_interval`."""
        await forever(
            self._prune_now,
            lambda: asyncio.sleep(self.settings.retention_interval),
            "pruning finished runs failed; will retry",
        )

    async def _prune_now(self) -> None:
        pruned = await self.prune(time.time())
        if pruned:
            logger.info("pruned finished runs", extra={"pruned": pruned})

    async def prune(self, now: float) -> int:
        """Delete what retention says, a batch a transaction, pausing between batches so
        that the flush and submits never wait behind the whole of it."""
        finished_before = now - self.settings.retention_days * 86400
        cutoff = await self.calls.call(self.store.prune_cutoff, self.settings.retention_max_runs)
        pruned = 0
        while True:
            deleted, orphaned = await self.calls.call(self.store.prune, finished_before, cutoff)
            if orphaned and self.objects is not None:
                await asyncio.to_thread(self.objects.delete, orphaned)
            pruned += deleted
            if deleted < PRUNE_BATCH:
                return pruned
            await asyncio.sleep(PRUNE_PAUSE)
