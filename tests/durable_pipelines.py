"""Pipelines for the durable-run tests: each step appends a line to a side file (the
`log` parameter), so a test can tell which steps ran, how often, and when.

`wait_for` holds a step until a file exists: a test kills the server while the step
waits, and lets the resumed run through by creating the file.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

from service import pipeline, step


def note(log: str, line: str) -> None:
    with open(log, "a") as file:
        file.write(f"{line} {time.time():.6f}\n")


def lines(log: str, prefix: str) -> int:
    path = Path(log)
    if not path.exists():
        return 0
    return sum(1 for line in path.read_text().splitlines() if line.split()[0] == prefix)


def wait_for(gate: str) -> None:
    deadline = time.monotonic() + 60
    while not Path(gate).exists() and time.monotonic() < deadline:
        time.sleep(0.02)


@step
def start(log: str) -> Annotated[int, "start"]:
    note(log, "s1")
    return 21


@step
async def double(value: int, log: str) -> Annotated[dict[str, Any], "doubled"]:
    note(log, "s2")
    return {"value": value * 2, "tags": ["a", "b"]}


@step
def hold(doubled: dict[str, Any], log: str, gate: str) -> Annotated[tuple[int, float], "held"]:
    note(log, "s3")
    wait_for(gate)
    return (doubled["value"], 0.5)


@step
def finish(held: tuple[int, float], log: str) -> Annotated[dict[str, Any], "result"]:
    note(log, "s4")
    return {"sum": held[0] + held[1], "held": list(held)}


@pipeline
def four_steps(log: str, gate: str) -> Any:
    """A sync, an async, a held and a sync step in a chain."""
    return finish(hold(double(start(log), log), log, gate), log)


@pipeline(max_attempts=2)
def two_attempts(log: str, gate: str) -> Any:
    return finish(hold(double(start(log), log), log, gate), log)


@pipeline(on_version_change="restart")
def restarts(log: str, gate: str) -> Any:
    return finish(hold(double(start(log), log), log, gate), log)


# -- step retries ------------------------------------------------------------------------


@step(retries=3, retry_delay=0.3, backoff=2.0, jitter=0.1)
def flaky(log: str, failures: int = 2) -> Annotated[str, "flaky"]:
    note(log, "try")
    if lines(log, "try") <= failures:
        raise ConnectionError("the service refused the connection")
    return "ok"


@step(retries=3, retry_delay=0.1)
def wrong(log: str) -> Annotated[str, "wrong"]:
    note(log, "wrong")
    raise ValueError("a bad value is not retried")


@pipeline
def retried(log: str, failures: int = 2) -> Any:
    return flaky(log, failures)


@pipeline
def not_retried(log: str) -> Any:
    return wrong(log)


@step(retries=5, retry_delay=1.0, backoff=1.0, jitter=0.0)
async def always_down(log: str) -> Annotated[str, "down"]:
    note(log, "try")
    raise TimeoutError("still down")


@pipeline
def retries_past_deadline(log: str) -> Any:
    return always_down(log)


# -- a retry from a step -----------------------------------------------------------------


@step
def check(doubled: dict[str, Any], log: str, gate: str) -> Annotated[tuple[int, float], "held"]:
    note(log, "s3")
    if not Path(gate).exists():
        raise RuntimeError("bad data: the source is not fixed yet")
    return (doubled["value"], 0.5)


@pipeline
def checked(log: str, gate: str) -> Any:
    """Fails at its third step until the `gate` file exists (the data source is fixed)."""
    return finish(check(double(start(log), log), log, gate), log)
