"""Leases and recovery: this process renews the leases of the runs it executes (a
heartbeat), and recovers the runs of processes that stopped renewing theirs (they died).

A process that dies stops renewing; once the lease expires any process requeues the run,
to resume from its checkpoints (or, with `retry_safe` and `resume=False`, to run again),
until it was interrupted `max_attempts` times; a pipeline with neither fails it as
`interrupted`. So a run is never lost,
and never left `running` forever, with one process or many sharing PostgreSQL.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping

from service.observe.metrics import Metrics
from service.runs.calls import StoreCalls
from service.runs.execution import ActiveRun
from service.runs.store import RunStore, is_transient
from service.runs.waiting import forever
from service.settings import Settings

logger = logging.getLogger("pipeserve.runs")


class LeaseKeeper:
    def __init__(
        self,
        settings: Settings,
        store: RunStore,
        calls: StoreCalls,
        metrics: Metrics,
        owner: str,
        active: Mapping[str, ActiveRun],
        requeue: bool,
        max_attempts: int,
        requeued: Callable[[], None],
        failed: Callable[[], None],
    ) -> None:
        self.settings = settings
        self.store = store
        self.calls = calls
        self.metrics = metrics
        self.owner = owner
        # The runs this process executes (the dispatcher's).
        self.active = active
        # Whether the pipeline's interrupted runs run again (resumed, or re-run if safe).
        self.requeue = requeue
        self.max_attempts = max_attempts
        # Told when recovery requeued runs (to claim them), and when it failed some (their
        # webhooks are due).
        self._requeued = requeued
        self._failed = failed

    async def heartbeat(self) -> None:
        """Renew our leases, a third of a lease apart; stop the runs asked to cancel, and
        those that are no longer ours."""
        while True:
            await asyncio.sleep(self.settings.run_lease / 3)
            # Finished runs too, while their end waits to be written (the database is out).
            mine = list(self.active)
            if not mine:
                continue
            try:
                cancel, lost = await self.calls.call(
                    self.store.renew_leases, self.owner, mine, time.time(), self.settings.run_lease
                )
            except Exception as exc:
                if not is_transient(exc):
                    logger.exception("renewing run leases failed; will retry")
                continue
            for run_id in cancel | lost:
                active = self.active.get(run_id)
                if active is not None and not active.finished:
                    if run_id in lost:
                        logger.warning(
                            "lost the lease of a run (this process stalled); stopping it here",
                            extra={"run_id": run_id},
                        )
                        active.lost = True
                    active.stop()

    async def recovery(self) -> None:
        """Recover expired leases, every `poll_interval`."""
        await forever(
            self.recover,
            lambda: asyncio.sleep(self.settings.poll_interval),
            "recovering runs of dead processes failed; will retry",
        )

    async def recover(self) -> None:
        requeued, failed = await self.calls.call(
            self.store.recover_expired, time.time(), self.requeue, self.owner, self.max_attempts
        )
        for run_id in requeued:
            logger.warning("requeued a run whose process died", extra={"run_id": run_id})
        for run_id in failed:
            logger.warning("failed a run whose process died", extra={"run_id": run_id})
            self.metrics.count_run("failed")
        if requeued:
            self._requeued()
        if failed:
            self._failed()
