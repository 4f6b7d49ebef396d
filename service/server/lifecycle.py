"""The life of one server process's pipeline: on_init beside the server, drain, shutdown.

`PipelineService` holds everything one app serves with (nothing is module-global) and
moves through starting → ready → draining → stopped. What only a process may do (signals,
exiting, freezing the heap) it leaves to its `ProcessHooks`, which the CLI's server fills;
an app embedded in another ASGI server gets none of it.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import uuid
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from service.auth import KeyFile, KeyRing, parse_hash_setting
from service.errors import ServiceUnavailable
from service.observe.metrics import Metrics
from service.runs.manager import RunManager
from service.runs.records import Deployment
from service.runs.store import StoreError, default_sqlite_url
from service.runs.tasks import BackgroundTasks
from service.sdk.pipeline import Pipeline
from service.sdk.requests import RequestModels
from service.sdk.runner import Runner
from service.settings import Settings, keys_file

logger = logging.getLogger("pipeserve.app")


def _nothing(*args: Any) -> None:
    return None


@dataclass(frozen=True)
class ProcessHooks:
    """What the process owning the app does at the app's turning points.

    `started`: the app has started (the CLI puts its drain in front of the server's SIGTERM
    handling). `ready`: on_init has finished (the CLI freezes the heap). `failed`: the app
    cannot serve (on_init or the run store failed; the CLI stops the process, so that it
    does not look alive). Embedded, each does nothing: /health and /ready tell the state.
    """

    started: Callable[[PipelineService], None] = _nothing
    ready: Callable[[], None] = _nothing
    failed: Callable[[BaseException], None] = _nothing


class PipelineService:
    """Everything one app holds for its pipeline, and its lifecycle."""

    def __init__(self, pipeline: Pipeline, settings: Settings, hooks: ProcessHooks) -> None:
        self.pipeline = pipeline
        self.settings = settings
        self.hooks = hooks
        self.deployment_name = settings.name or pipeline.name
        self.deployment_id = str(
            uuid.uuid5(uuid.NAMESPACE_URL, f"pipeserve:{self.deployment_name}")
        )
        # The limits every JSON entry point holds to, in the models and in the schema.
        self.models = RequestModels(
            pipeline,
            max_timeout=settings.max_timeout,
            max_json_depth=settings.max_json_depth,
            webhooks=settings.webhook_secret is not None,
        )
        self.state: Any = None
        self.runner: Runner | None = None
        self.ready = False
        self.init_error: BaseException | None = None
        self.init_duration: float | None = None
        self.started_at = time.time()
        self.executor: ThreadPoolExecutor | None = None
        self.slots = asyncio.Semaphore(settings.max_concurrency)
        self.keys = KeyRing(
            KeyFile(keys_file(settings)),
            parse_hash_setting(settings.auth_key_hashes),
            settings.auth,
        )
        self.metrics = Metrics(pipeline.name, pipeline.version)
        self.runs = RunManager(
            settings,
            pipeline,
            Deployment(self.deployment_name, pipeline.name, pipeline.version),
            self.models,
            self.metrics,
            settings.database_url or default_sqlite_url(settings.home, self.deployment_name),
        )
        self._drain_started: float | None = None
        # Set by `begin_drain`: /ready and new work answer 503 while in-flight work finishes.
        self.draining = False
        self._background = BackgroundTasks()
        self._init_task: asyncio.Task[Any] | None = None
        self._cleaned_up = False
        # The deadlines of the invocations in flight, so that shutdown can end them when
        # its grace period is over (`abandon_invocations`).
        self.clocks: set[asyncio.Timeout] = set()
        self.abandoned = False

    async def startup(self) -> None:
        self.executor = ThreadPoolExecutor(
            max_workers=self.settings.max_threads, thread_name_prefix="pipeserve-step"
        )
        # on_init runs beside the server, so /health answers and /ready says 503 meanwhile.
        self._init_task = self.spawn(self._initialise())
        self.hooks.started(self)

    def accepting(self) -> Runner:
        """The runner, if new work is accepted now; else the 503 that says why not."""
        if self.draining:
            raise ServiceUnavailable("the server is shutting down", retry_after=1)
        if self.runner is None:
            if self.init_error is not None:
                raise ServiceUnavailable("on_init failed; the server is stopping", retry_after=5)
            raise ServiceUnavailable("the pipeline is still initialising (on_init)", retry_after=1)
        return self.runner

    def begin_drain(self) -> None:
        """Refuse new work from now on (503), and let the work in flight finish."""
        if not self.draining:
            logger.info(
                "draining: refusing new work", extra={"delay": self.settings.shutdown_delay}
            )
        if self._drain_started is None:
            self._drain_started = time.time()
        self.draining = True
        self.ready = False
        self.runs.begin_drain()

    def abandon_invocations(self) -> None:
        """The grace period is over: end every invocation still in flight now. Its
        caller gets 503; a sync step still running is left to its thread."""
        if not self.clocks:
            return
        logger.warning(
            "grace period over: abandoning invocations in flight",
            extra={"invocations": len(self.clocks)},
        )
        self.abandoned = True
        now = asyncio.get_running_loop().time()
        for clock in self.clocks:
            clock.reschedule(now)

    async def _initialise(self) -> None:
        try:
            await self.runs.open()
        except StoreError as exc:
            logger.error("cannot open the run store; stopping: %s", exc)
            await self._fail(exc)
            return
        t0 = time.perf_counter()
        try:
            state = await self._on_init()
        except Exception as exc:
            logger.error("on_init failed; stopping", exc_info=exc)
            await self._fail(exc)
            return
        self.init_duration = time.perf_counter() - t0
        self.metrics.on_init_duration.set(self.init_duration)
        self.state = state
        assert self.executor is not None
        self.runner = Runner(self.pipeline, self.executor, state)
        self.runs.attach(self.runner)
        self.hooks.ready()
        self.ready = not self.draining
        logger.info(
            "ready",
            extra={
                "pipeline": self.pipeline.name,
                "on_init_seconds": round(self.init_duration, 6),
                "auth": self.keys.source,
            },
        )

    async def _on_init(self) -> Any:
        on_init = self.pipeline.on_init
        if on_init is None:
            return None
        if inspect.iscoroutinefunction(on_init):
            return await on_init()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, on_init)

    async def _fail(self, exc: BaseException) -> None:
        self.init_error = exc
        await self.cleanup()
        self.hooks.failed(exc)

    async def shutdown(self) -> None:
        self.ready = False
        if self._init_task is not None:
            self._init_task.cancel()
        # Batch runs get what is left of the grace period that began with the drain.
        started = self._drain_started or time.time()
        deadline = started + self.settings.shutdown_delay + self.settings.grace_period
        await self.runs.close(deadline)
        # What is left waits on threads of abandoned sync steps (to free their slots):
        # nothing waits for those any more.
        await self._background.cancel()
        await self.cleanup()
        if self.executor is not None:
            # Threads of abandoned steps cannot be killed; do not wait for them.
            self.executor.shutdown(wait=False, cancel_futures=True)
        self.metrics.process_exit()

    async def cleanup(self) -> None:
        if self._cleaned_up:
            return
        self._cleaned_up = True
        on_cleanup = self.pipeline.on_cleanup
        if on_cleanup is None:
            return
        try:
            takes_state = len(inspect.signature(on_cleanup).parameters) > 0
            result = on_cleanup(self.state) if takes_state else on_cleanup()
            if inspect.isawaitable(result):
                await result
        except Exception:
            logger.exception("on_cleanup failed")

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        return self._background.spawn(coro)
