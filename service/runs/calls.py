"""Calls from the event loop to the blocking run store: in the store's own threads, each
outcome kept as the store's health, and tried again as long as the caller can wait."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from service.errors import StoreUnavailable
from service.runs.store import StoreHealth, is_transient

T = TypeVar("T")

# Store calls at once on PostgreSQL (SQLite: one, see `StoreCalls`).
STORE_THREADS = 4
# A request's store call is tried this many times, this long apart, before a 503.
STORE_RETRIES = (0.1, 0.3, 0.6)
# What a 503 for an unreachable store asks the client to wait.
STORE_RETRY_AFTER = 5
# The longest wait between two tries of a write that must not be lost.
MAX_FINAL_WRITE_BACKOFF = 5.0


class StoreCalls:
    def __init__(self, is_sqlite: bool, health: StoreHealth) -> None:
        self.health = health
        # SQLite takes one writer at a time; with one thread, its only connection keeps its
        # page cache (another connection's write empties it) and its memory in one malloc
        # arena. Four threads, each with a connection, made SQLite's pages churn through
        # four arenas, which kept ~15 MiB of free holes after 10 minutes (the soak).
        threads = 1 if is_sqlite else STORE_THREADS
        self._db = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="pipeserve-store")

    async def call(self, func: Callable[..., T], *args: Any) -> T:
        """A blocking store call, in the store's threads; its outcome is the store's health."""
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(self._db, functools.partial(func, *args))
        except Exception as exc:
            # A refusal (a constraint, a bad value) is an answer: the store is reachable.
            if is_transient(exc):
                self.health.failed(exc)
            else:
                self.health.ok()
            raise
        self.health.ok()
        return result

    async def answer(self, func: Callable[..., T], *args: Any) -> T:
        """A store call a request waits on: a database out of reach is tried again a few
        times, then answered 503 with `Retry-After`, never 500."""
        for wait in (*STORE_RETRIES, None):
            try:
                return await self.call(func, *args)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                if wait is None:
                    raise StoreUnavailable(
                        "the run store is out of reach; retry later (/invoke still serves)",
                        retry_after=STORE_RETRY_AFTER,
                    ) from None
                await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    async def until_written(self, func: Callable[..., T], *args: Any) -> T:
        """A write that must not be lost (a batch run's end): tried again, with backoff,
        for as long as the database stays out of reach and this process lives."""
        return await until_done(functools.partial(self.call, func, *args))

    def shutdown(self) -> None:
        self._db.shutdown(wait=False)


async def until_done(
    attempt: Callable[[], Awaitable[T]],
    *,
    give_up_at: float | None = None,
    max_wait: float = MAX_FINAL_WRITE_BACKOFF,
) -> T:
    """`attempt` until it does not fail for the database being out of reach, with backoff
    (at most `max_wait` between two tries). Any other failure is raised, and so is that
    one when the next try would start past `give_up_at` (epoch seconds), if given."""
    wait = 0.1
    while True:
        try:
            return await attempt()
        except Exception as exc:
            if not is_transient(exc):
                raise
            if give_up_at is not None and time.time() + wait > give_up_at:
                raise
            await asyncio.sleep(wait)
            wait = min(max_wait, wait * 2)
