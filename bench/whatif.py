"""Where pipeserve's time above the floor goes: its parts switched off one by one.

    python -m bench.whatif [--workloads echo-async,echo-def,chain20]

Each part is switched off on a running app in-process (patching the instance),
cumulatively, and measured as CPU per /invoke (bench/asgi.py); each step's difference is
that part's cost. The patches reach into the Invoker (server/invoke.py): when it changes shape,
update them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import service.server.invoke as service_invoke
from service.observe import logs
from service.sdk.pipeline import Pipeline

from . import asgi, inprocess
from .floor import FLOORS
from .harness import ASGI_PIPELINES, Plan


class _NoMetric:
    def inc(self, amount: float = 1) -> None:
        return None

    def dec(self, amount: float = 1) -> None:
        return None


async def _no_slot() -> None:
    return None


# A part switched off on a live app, given its Invoker.
Patch = Callable[[Any], None]


def _replace(owner: Any, name: str, value: Any) -> None:
    # Setting a name the app no longer has would switch nothing off, silently.
    if not hasattr(owner, name):
        raise AttributeError(f"{owner!r} has no {name!r} any more: update bench/whatif.py")
    setattr(owner, name, value)


def _no_timeout(service: Any) -> None:
    # invoke.py's own name for asyncio.timeout: the global one stays, for everything else.
    _replace(service_invoke, "timeout", lambda delay: contextlib.nullcontext())


def _no_access_log(service: Any) -> None:
    _replace(logs.ACCESS, "disabled", True)


def _no_metrics(service: Any) -> None:
    metrics = service.metrics
    _replace(metrics, "observe_request", lambda *args: None)
    _replace(metrics, "observe_run", lambda *args: None)
    _replace(metrics, "in_flight", _NoMetric())


def _no_metadata(service: Any) -> None:
    _replace(service, "metadata", lambda inv: {"steps": {}})


def _no_validation(service: Any) -> None:
    data = service.parse_body(asgi.ECHO_BODY)
    _replace(service, "parse_body", lambda body: data)


def _no_slot_patch(service: Any) -> None:
    _replace(service, "_acquire_slot", _no_slot)


# Where the time goes: each part switched off in turn, cumulatively.
ATTRIBUTION: tuple[tuple[str, Patch], ...] = (
    ("- access log", _no_access_log),
    ("- metrics", _no_metrics),
    ("- asyncio.timeout", _no_timeout),
    ("- metadata()", _no_metadata),
    ("- validation (parse_body)", _no_validation),
    ("- concurrency slot", _no_slot_patch),
)


def measure(pipeline: Pipeline, floor_name: str, n: int, rounds: int) -> dict[str, float]:
    """CPU us per /invoke: the floor's, pipeserve's ("now"), then after each ATTRIBUTION step."""

    async def main() -> dict[str, float]:
        found: dict[str, float] = {}
        floor = FLOORS[floor_name]().app()
        async with asgi.production_app(pipeline) as app, asgi.started(floor):
            found["floor"] = await asgi.best_us(floor, n, rounds)
            found["now"] = await asgi.best_us(app, n, rounds)
            try:
                for label, patch in ATTRIBUTION:
                    patch(app.state.invoker)
                    found[label] = await asgi.best_us(app, n, rounds)
            finally:
                _replace(service_invoke, "timeout", asyncio.timeout)
                logs.ACCESS.disabled = False
        return found

    return inprocess.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.whatif", description=__doc__)
    # The harness's in-process figures: the same pipelines, requests and rounds.
    plan = Plan()
    parser.add_argument("--workloads", default=",".join(plan.asgi_pipelines))
    args = parser.parse_args()
    print(f"CPU per /invoke in-process, us (asgi.py; best of {plan.rounds} x {plan.asgi_requests})")
    for name in args.workloads.split(","):
        found = measure(ASGI_PIPELINES[name], name, plan.asgi_requests, plan.rounds)
        print(f"\n{name}: floor {found['floor']:.1f}")
        previous = found["now"]
        print(f"  {'now':28s} {previous:6.1f}  (floor {found['now'] - found['floor']:+.1f})")
        for label, _ in ATTRIBUTION:
            change = found[label] - previous
            previous = found[label]
            print(
                f"  {label:28s} {found[label]:6.1f}  "
                f"(floor {found[label] - found['floor']:+.1f}, step {change:+.1f})"
            )


if __name__ == "__main__":
    main()
