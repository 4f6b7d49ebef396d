"""Waiting on `asyncio.Event`s with a timeout: how the run loops sleep until woken."""

from __future__ import annotations

import asyncio


async def wait_and_clear(event: asyncio.Event, timeout: float) -> None:
    """Until `event` is set or `timeout` passes; then clear it for the next wait."""
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except TimeoutError:
        pass
    event.clear()


async def wait_events(waiting: list[asyncio.Event], timeout: float) -> None:
    """Until every one of `waiting` is set, or `timeout` passes."""
    pending = [e for e in waiting if not e.is_set()]
    if not pending:
        return
    tasks = [asyncio.ensure_future(e.wait()) for e in pending]
    try:
        await asyncio.wait(tasks, timeout=timeout)
    finally:
        for task in tasks:
            task.cancel()
