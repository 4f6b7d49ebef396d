"""Prometheus metrics, with prometheus-client; right with several worker processes too.

With `--workers N` the CLI sets PROMETHEUS_MULTIPROC_DIR before the workers start, so
every process writes its values to files there and /metrics aggregates them all.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from service import __version__

if TYPE_CHECKING:
    from service.sdk.invocation import StepRecord

# Latency buckets in seconds, from 100 µs (a trivial step) to minutes (training).
_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Metrics:
    """The metrics of one app; registered in its own registry, never the global one."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, pipeline_name: str, pipeline_version: str) -> None:
        self.multiprocess = multiprocess_dir() is not None
        # In multiprocess mode values live in files; the registry is built per scrape.
        self.registry: CollectorRegistry | None = None if self.multiprocess else CollectorRegistry()
        registry: Any = self.registry
        self.pipeline_name = pipeline_name
        self._declare_http(registry)
        self._declare_runs(registry)
        self._declare_process(registry, pipeline_name, pipeline_version)
        self._invocations = self.invocation_duration.labels(pipeline_name)
        self._steps: dict[str, Any] = {}
        self._runs: dict[str, Any] = {}
        self._requests: dict[tuple[str, str, int], Any] = {}
        self._durations: dict[str, Any] = {}

    def _declare_http(self, registry: Any) -> None:
        self.requests = Counter(
            "pipeserve_http_requests_total",
            "HTTP requests by route, method and status.",
            ["route", "method", "status"],
            registry=registry,
        )
        self.request_duration = Histogram(
            "pipeserve_http_request_duration_seconds",
            "HTTP request latency by route.",
            ["route"],
            buckets=_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "pipeserve_http_requests_in_flight",
            "HTTP requests being served.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.queue_depth = Gauge(
            "pipeserve_queue_depth",
            "Invocations waiting for a concurrency slot.",
            registry=registry,
            multiprocess_mode="livesum",
        )

    def _declare_runs(self, registry: Any) -> None:
        self.invocation_duration = Histogram(
            "pipeserve_invocation_duration_seconds",
            "Pipeline invocation duration by pipeline.",
            ["pipeline"],
            buckets=_BUCKETS,
            registry=registry,
        )
        self.step_duration = Histogram(
            "pipeserve_step_duration_seconds",
            "Step duration by pipeline and step.",
            ["pipeline", "step"],
            buckets=_BUCKETS,
            registry=registry,
        )
        self.step_retries = Counter(
            "pipeserve_step_retries_total",
            "Retries of steps whose retry policy caught an error, by pipeline and step.",
            ["pipeline", "step"],
            registry=registry,
        )
        self.checkpoints = Counter(
            "pipeserve_checkpoints_total",
            "Step checkpoints of batch runs: written, restored, or skipped (too large, no "
            "allowed form, or the store refused them).",
            ["outcome"],
            registry=registry,
        )
        self.checkpoint_bytes = Counter(
            "pipeserve_checkpoint_bytes_total",
            "Bytes of step checkpoints written.",
            registry=registry,
        )
        self.runs = Counter(
            "pipeserve_runs_total",
            "Finished runs by pipeline and final status.",
            ["pipeline", "status"],
            registry=registry,
        )
        self.records_dropped = Counter(
            "pipeserve_run_records_dropped_total",
            "Run records (or parts of them) the run store could not take, by reason.",
            ["reason"],
            registry=registry,
        )
        self.store_up = Gauge(
            "pipeserve_run_store_up",
            "1 while the run store answers, 0 during an outage.",
            registry=registry,
            multiprocess_mode="min",
        )
        self.store_up.set(1)

    def _declare_process(self, registry: Any, pipeline_name: str, pipeline_version: str) -> None:
        self.on_init_duration = Gauge(
            "pipeserve_on_init_duration_seconds",
            "How long on_init took in this process.",
            registry=registry,
            multiprocess_mode="max",
        )
        self.build_info = Gauge(
            "pipeserve_build_info",
            "pipeserve and pipeline versions (always 1).",
            ["version", "pipeline", "pipeline_version"],
            registry=registry,
            multiprocess_mode="max",
        )
        self.build_info.labels(__version__, pipeline_name, pipeline_version).set(1)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        # Children are cached: .labels() costs a lock and a dict build per call.
        key = (route, method, status)
        child = self._requests.get(key)
        if child is None:
            child = self._requests[key] = self.requests.labels(route, method, str(status))
        child.inc()
        duration = self._durations.get(route)
        if duration is None:
            duration = self._durations[route] = self.request_duration.labels(route)
        duration.observe(seconds)

    def count_run(self, status: str) -> None:
        """A run that ended without being timed here (one a dead process left behind)."""
        run = self._runs.get(status)
        if run is None:
            run = self._runs[status] = self.runs.labels(self.pipeline_name, status)
        run.inc()

    def observe_run(self, status: str, seconds: float, steps: Mapping[str, StepRecord]) -> None:
        self.count_run(status)
        self._invocations.observe(seconds)
        for name, record in steps.items():
            duration = record.duration
            if duration is None:
                continue
            step = self._steps.get(name)
            if step is None:
                step = self._steps[name] = self.step_duration.labels(self.pipeline_name, name)
            step.observe(duration)
            if record.tries > 1:
                self.step_retries.labels(self.pipeline_name, name).inc(record.tries - 1)

    def render(self) -> bytes:
        if self.registry is not None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)

    def process_exit(self) -> None:
        if self.multiprocess:
            multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
