"""The foreground server process of `pipeserve serve`: uvicorn, signals, exit.

The app (`service.server`) has no process-wide side effects; this process gives it the
ones a server process needs, through `ProcessHooks`: on SIGTERM a drain comes before
uvicorn's graceful shutdown, the heap is frozen once the pipeline is ready, and a server
whose on_init (or run store) failed stops instead of looking alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pydantic
import uvicorn
from starlette.applications import Starlette

from service.cli.errors import fail
from service.cli.paths import drop_cwd, put_cwd_first
from service.observe.logs import configure_logging, flush_logs
from service.runs.store import StoreError
from service.server.app import create_app
from service.server.connections import (
    ConnectionLimits,
    GuardedHttpToolsProtocol,
    close_listeners,
    default_max_connections,
)
from service.server.lifecycle import PipelineService, ProcessHooks
from service.settings import Settings, describe_error, settings_env

logger = logging.getLogger("pipeserve.cli")

# Invocations still in flight this long before the server's grace period ends are
# answered 503 by us, before the server cancels them with a plain-text 500.
ABANDON_MARGIN = 0.5


def connection_protocol(settings: Settings) -> Callable[..., Any]:
    """uvicorn's httptools protocol with the header timeout and the connection limit; a
    partial of a frozen dataclass, so it pickles into `--workers` processes."""
    limits = ConnectionLimits(
        header_timeout=settings.header_timeout,
        max_connections=settings.max_connections or default_max_connections(),
    )
    return functools.partial(GuardedHttpToolsProtocol, limits=limits)


def _drain_on_sigterm(service: PipelineService) -> None:
    """Put a drain in front of the server's own SIGTERM handling (uvicorn's).

    On SIGTERM, /ready and new work answer 503 at once; after `shutdown_delay` (time
    for a load balancer to stop sending) the server's graceful shutdown starts, which
    lets in-flight requests finish within `grace_period`. A second SIGTERM stops at once.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)
    if not callable(previous):
        return
    loop = asyncio.get_running_loop()
    settings = service.settings
    delay = settings.shutdown_delay

    def close_listener(sig: int, frame: Any) -> None:
        # The server's graceful shutdown starts now and lasts `grace_period`: what is
        # still running just before it ends is answered and abandoned by us, so that
        # callers get the JSON error and the process exits in time.
        loop.call_later(
            max(0.0, settings.grace_period - ABANDON_MARGIN), service.abandon_invocations
        )
        previous(sig, frame)

    def on_sigterm(sig: int, frame: Any) -> None:
        if service.draining or delay <= 0:
            service.begin_drain()
            loop.call_soon_threadsafe(close_listener, sig, frame)
            return
        service.begin_drain()
        loop.call_soon_threadsafe(loop.call_later, delay, close_listener, sig, None)

    signal.signal(signal.SIGTERM, on_sigterm)


def freeze_heap() -> None:
    # Everything loaded so far (modules, schemas, the state on_init built) lives as long
    # as the process: frozen, the garbage collector stops scanning it on every full
    # collection, which with a run store's worth of libraries cost ~30 us a request.
    gc.collect()
    gc.freeze()


def _stop_process(error: BaseException) -> None:
    # A process that cannot serve must not look alive: the same stop as an orchestrator's.
    os.kill(os.getpid(), signal.SIGTERM)


def process_hooks() -> ProcessHooks:
    return ProcessHooks(started=_drain_on_sigterm, ready=freeze_heap, failed=_stop_process)


def worker_app() -> Starlette:
    """Factory of each `--workers` process's app (`uvicorn --factory`): settings from the
    environment, which the parent process set."""
    put_cwd_first()
    try:
        settings = Settings()
    except pydantic.ValidationError as exc:
        fail(describe_error(exc), 1)
    configure_logging(settings.log_level, settings.log_format)
    return create_app(settings=settings, hooks=process_hooks())


def _uvicorn_options(settings: Settings) -> dict[str, Any]:
    return {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "log_config": None,
        "access_log": False,
        "lifespan": "on",
        "timeout_graceful_shutdown": settings.grace_period,
        "timeout_keep_alive": settings.keep_alive_timeout,
        "http": connection_protocol(settings),
    }


def run_server(settings: Settings, pipeline: Any) -> None:
    """Serve `pipeline` in the foreground until a signal ends it; an app that could not
    serve ends the process through `fail`."""
    configure_logging(settings.log_level, settings.log_format)
    options = _uvicorn_options(settings)
    if settings.workers > 1:
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            # A fresh directory: stale files of an earlier run would add to the counts.
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="pipeserve-metrics-")
        # Each worker process builds its own app from the environment.
        os.environ.update(settings_env(settings.model_dump()))
        drop_cwd()
        uvicorn.run(
            "service.cli.server:worker_app", factory=True, workers=settings.workers, **options
        )
        return

    app = create_app(pipeline, settings, hooks=process_hooks())
    server = _Server(uvicorn.Config(app, **options))
    code: Any = 0
    try:
        server.run()
        error = app.state.service.init_error
        if isinstance(error, StoreError):
            fail(f"cannot open the run store: {error}", 1)
        if error is not None:
            fail(f"on_init failed: {error!r}", 1)
        if not server.started:
            sys.exit(1)
    except SystemExit as exc:
        code = exc.code
        raise
    finally:
        _exit_past_abandoned_threads(code)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            yield
            # SIGTERM is how orchestrators stop a pod: after the graceful shutdown the
            # process exits 0 instead of uvicorn raising the signal again.
            self._captured_signals = [s for s in self._captured_signals if s != signal.SIGTERM]

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # As uvicorn makes the protocol of each connection it accepts.
        protocol_class: Any = self.config.http_protocol_class
        protocol = functools.partial(
            protocol_class,
            config=self.config,
            server_state=self.server_state,
            app_state=self.lifespan.state,
        )
        await close_listeners(self.servers, protocol)
        await super().shutdown(sockets)


def _exit_past_abandoned_threads(code: Any) -> None:
    """Exit now if threads of ours still run: a sync step the grace period abandoned
    cannot be stopped, and the interpreter would wait for it at exit (the pool's threads
    are joined), past any grace period an orchestrator allows."""
    give_up = time.monotonic() + 0.5  # idle pool threads end in a moment
    lingering = []
    for thread in threading.enumerate():
        if thread.name.startswith("pipeserve-") and not thread.daemon:
            thread.join(max(0.0, give_up - time.monotonic()))
            if thread.is_alive():
                lingering.append(thread.name)
    if not lingering:
        return
    logger.warning(
        "exiting with threads still running (abandoned sync steps)",
        extra={"threads": len(lingering)},
    )
    flush_logs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else 1)
