"""The Starlette app: serves one pipeline, loaded once per process."""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import os
import signal
import threading
import time
import uuid
from asyncio import timeout
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

import pydantic
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service import __version__
from service.auth import KeyFile, KeyRing, parse_hash_setting
from service.errors import (
    DeadlineExceeded,
    ServiceError,
    ServiceUnavailable,
    StepFailed,
    ValidationFailed,
)
from service.observe.logs import configure_logging
from service.observe.metrics import Metrics
from service.runs.manager import RunManager
from service.runs.records import Deployment, iso, running_step, step_records, utc
from service.runs.store import StoreError, default_sqlite_url
from service.sdk.loader import load_pipeline
from service.sdk.pipeline import Pipeline
from service.sdk.runner import Invocation, Runner, StepError
from service.sdk.serialize import dumps, dumps_response
from service.server.middleware import EdgeMiddleware
from service.server.openapi import build_openapi
from service.server.responses import JSONBody
from service.server.runs_routes import RunsAPI
from service.server.schema import InvokeRequestData, RequestModels
from service.server.ui import ui_routes
from service.settings import Settings, keys_file

logger = logging.getLogger("pipeserve.app")

# Invocations still in flight this long before the server's grace period ends are
# answered 503 by us, before the server cancels them with a plain-text 500.
ABANDON_MARGIN = 0.5


async def _maybe_await(result: Any) -> Any:
    return await result if inspect.isawaitable(result) else result


class PipelineService:
    """Everything one server process holds for its pipeline; nothing is module-global."""

    def __init__(self, pipeline: Pipeline, settings: Settings) -> None:
        self.pipeline = pipeline
        self.settings = settings
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
        self.openapi = dumps(build_openapi(self.models, self.deployment_name))
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
        self.runs_api = RunsAPI(self.runs, self.models, self._runner)
        self._drain_started: float | None = None
        # Set on SIGTERM: /ready and new work answer 503 while in-flight work finishes.
        self.draining = False
        self._background: set[asyncio.Task[Any]] = set()
        self._init_task: asyncio.Task[Any] | None = None
        self._cleaned_up = False
        # The deadlines of the invocations in flight, so that shutdown can end them when
        # its grace period is over (`abandon_invocations`).
        self._clocks: set[asyncio.Timeout] = set()
        self.abandoned = False

    # -- lifecycle ------------------------------------------------------------------

    async def startup(self) -> None:
        self.executor = ThreadPoolExecutor(
            max_workers=self.settings.max_threads, thread_name_prefix="pipeserve-step"
        )
        # on_init runs beside the server, so /health answers and /ready says 503 meanwhile.
        self._init_task = self._spawn(self._initialise())
        self._drain_on_sigterm()

    def _drain_on_sigterm(self) -> None:
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
        delay = self.settings.shutdown_delay

        def close_listener(sig: int, frame: Any) -> None:
            # The server's graceful shutdown starts now and lasts `grace_period`: what is
            # still running just before it ends is answered and abandoned by us, so that
            # callers get the JSON error and the process exits in time.
            loop.call_later(
                max(0.0, self.settings.grace_period - ABANDON_MARGIN), self.abandon_invocations
            )
            previous(sig, frame)

        def on_sigterm(sig: int, frame: Any) -> None:
            if self.draining or delay <= 0:
                self.begin_drain()
                loop.call_soon_threadsafe(close_listener, sig, frame)
                return
            self.begin_drain()
            loop.call_soon_threadsafe(loop.call_later, delay, close_listener, sig, None)

        signal.signal(signal.SIGTERM, on_sigterm)

    def abandon_invocations(self) -> None:
        """The grace period is over: end every invocation still in flight now. Its
        caller gets 503; a sync step still running is left to its thread."""
        if not self._clocks:
            return
        logger.warning(
            "grace period over: abandoning invocations in flight",
            extra={"invocations": len(self._clocks)},
        )
        self.abandoned = True
        now = asyncio.get_running_loop().time()
        for clock in self._clocks:
            clock.reschedule(now)

    def begin_drain(self) -> None:
        if not self.draining:
            logger.info(
                "draining: refusing new work", extra={"delay": self.settings.shutdown_delay}
            )
        if self._drain_started is None:
            self._drain_started = time.time()
        self.draining = True
        self.ready = False
        self.runs.begin_drain()

    async def _initialise(self) -> None:
        on_init = self.pipeline.on_init
        try:
            await self.runs.open()
        except StoreError as exc:
            self.init_error = exc
            logger.error("cannot open the run store; stopping: %s", exc)
            await self.cleanup()
            os.kill(os.getpid(), signal.SIGTERM)
            return
        t0 = time.perf_counter()
        try:
            if on_init is None:
                state = None
            elif inspect.iscoroutinefunction(on_init):
                state = await on_init()
            else:
                loop = asyncio.get_running_loop()
                state = await loop.run_in_executor(self.executor, on_init)
        except Exception as exc:
            self.init_error = exc
            logger.error("on_init failed; stopping", exc_info=exc)
            await self.cleanup()
            # Stop the server: a process that cannot serve must not look alive.
            os.kill(os.getpid(), signal.SIGTERM)
            return
        self.init_duration = time.perf_counter() - t0
        self.metrics.on_init_duration.set(self.init_duration)
        self.state = state
        assert self.executor is not None
        self.runner = Runner(self.pipeline, self.executor, state)
        self.runs.attach(self.runner)
        # Everything loaded so far (modules, schemas, the state on_init built) lives as long
        # as the process: frozen, the garbage collector stops scanning it on every full
        # collection, which with a run store's worth of libraries cost ~30 us a request.
        gc.collect()
        gc.freeze()
        self.ready = not self.draining
        logger.info(
            "ready",
            extra={
                "pipeline": self.pipeline.name,
                "on_init_seconds": round(self.init_duration, 6),
                "auth": self.keys.source,
            },
        )

    async def shutdown(self) -> None:
        self.ready = False
        if self._init_task is not None:
            self._init_task.cancel()
        # Batch runs get what is left of the grace period that began with SIGTERM.
        started = self._drain_started or time.time()
        deadline = started + self.settings.shutdown_delay + self.settings.grace_period
        await self.runs.close(deadline)
        # What is left waits on threads of abandoned sync steps (to free their slots):
        # nothing waits for those any more.
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
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
            await _maybe_await(on_cleanup(self.state) if takes_state else on_cleanup())
        except Exception:
            logger.exception("on_cleanup failed")

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # -- invocation -----------------------------------------------------------------

    def _runner(self) -> Runner:
        if self.draining:
            raise ServiceUnavailable("the server is shutting down", retry_after=1)
        if self.runner is None:
            if self.init_error is not None:
                raise ServiceUnavailable("on_init failed; the server is stopping", retry_after=5)
            raise ServiceUnavailable("the pipeline is still initialising (on_init)", retry_after=1)
        return self.runner

    def _deadline(self, requested: float | None) -> float:
        if requested is None:
            return self.settings.timeout
        if requested > self.settings.max_timeout:
            raise ValidationFailed(
                f"timeout: at most {self.settings.max_timeout} seconds are allowed",
                errors=[
                    {
                        "loc": ["timeout"],
                        "msg": "above the server's maximum",
                        "type": "less_than_equal",
                    }
                ],
            )
        return requested

    async def _acquire_slot(self) -> None:
        if not self.slots.locked():
            await self.slots.acquire()
            return
        self.metrics.queue_depth.inc()
        try:
            await asyncio.wait_for(self.slots.acquire(), self.settings.queue_timeout)
        except TimeoutError:
            raise ServiceUnavailable(
                f"at capacity: {self.settings.max_concurrency} invocations are running",
                retry_after=max(1, round(self.settings.queue_timeout)),
            ) from None
        finally:
            self.metrics.queue_depth.dec()

    def parse_body(self, body: bytes) -> InvokeRequestData:
        # The models hold the body to max_json_depth, max_timeout and 64-bit integers.
        return self.models.parse_invoke(body)

    async def invoke(self, request: Request) -> Response:
        runner = self._runner()
        data = self.parse_body(await request.body())
        deadline = self._deadline(data.timeout)
        inv = runner.invocation(data)
        # The scope's state dict itself: `request.state` builds a State object per request.
        request.scope["state"]["run_id"] = inv.run_id
        await self._acquire_slot()
        try:
            async with timeout(deadline) as clock:
                self._clocks.add(clock)
                try:
                    await runner.run(inv)
                finally:
                    self._clocks.discard(clock)
        except TimeoutError:
            if self.abandoned:
                _abandon(inv)
            else:
                inv.status = "timed_out"
            inv.finished_at = time.time()
        finally:
            inv.release_when_threads_end(self.slots, self._spawn)
            self.metrics.observe_run(inv.status, inv.execution_time, inv.records)
        # Built once: the answer's metadata, and the steps of the run's record.
        metadata = self.metadata(inv)
        self.runs.record(inv, data, deadline, metadata["steps"])
        if inv.status == "timed_out":
            raise DeadlineExceeded(
                f"the invocation passed its deadline of {deadline} seconds",
                step=running_step(inv),
                metadata=metadata,
            )
        if inv.status == "failed":
            if inv.error is not None and inv.error.type == "interrupted":
                raise ServiceUnavailable(inv.error.message, retry_after=1, metadata=metadata)
            raise self._step_failure(inv, metadata)
        document = {
            "success": True,
            "outputs": inv.outputs,
            "execution_time": inv.execution_time,
            "metadata": metadata,
            "error": None,
        }
        return JSONBody(dumps_response(document, inv.outputs))

    def _step_failure(self, inv: Invocation, metadata: dict[str, Any]) -> StepFailed:
        error = inv.error
        assert error is not None
        failure = StepFailed(
            f"step '{error.step}' failed: {error.type}: {error.message}",
            step=error.step,
        )
        failure.error_type = error.type
        if self.settings.debug:
            failure.details["traceback"] = error.traceback
        failure.details["metadata"] = metadata
        failure.details["execution_time"] = inv.execution_time
        return failure

    def metadata(self, inv: Invocation) -> dict[str, Any]:
        # Datetimes, not strings: orjson writes them as ISO 8601 (see records.utc).
        s = utc(inv.started_at)
        return {
            "deployment_name": self.deployment_name,
            "deployment_id": self.deployment_id,
            "pipeline_name": self.pipeline.name,
            "pipeline_version": self.pipeline.version,
            "run_id": inv.run_id,
            # ZenML's run name: the pipeline's and the start time (strftime costs more).
            "run_name": f"{self.pipeline.name}-{s.year:04}_{s.month:02}_{s.day:02}-"
            f"{s.hour:02}_{s.minute:02}_{s.second:02}_{s.microsecond:06}",
            "status": inv.status,
            "parameters_used": inv.parameters,
            "started_at": s,
            "finished_at": utc(inv.finished_at or time.time()),
            "steps": step_records(inv),
        }

    # -- about ----------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        if self.init_error is not None:
            return JSONBody({"status": "failed"}, status_code=503)
        return JSONBody({"status": "ok"})

    async def ready_endpoint(self, request: Request) -> Response:
        # The run store is not on /invoke's path: its outage is told here, not a 503 that
        # would take the pod out of the Service while it can still serve invocations.
        store = "degraded" if self.runs.health.degraded else "ok"
        if self.ready:
            return JSONBody({"status": "ready", "store": store})
        if self.draining:
            status = "draining"
        elif self.init_error is not None:
            status = "failed"
        else:
            status = "starting"
        return JSONBody(
            {"status": status, "store": store}, status_code=503, headers={"Retry-After": "1"}
        )

    async def info(self, request: Request) -> Response:
        return JSONBody(self.info_document())

    def info_document(self) -> dict[str, Any]:
        pipeline = self.pipeline
        steps = [
            {
                "name": node.name,
                "is_async": node.step.is_async,
                "upstream": [pipeline.steps[u].name for u in node.upstream],
                "parameters": sorted(node.overridable),
                "outputs": list(node.step.output_names),
            }
            for node in pipeline.steps
        ]
        return {
            "deployment_name": self.deployment_name,
            "deployment_id": self.deployment_id,
            "pipeline_name": pipeline.name,
            "version": pipeline.version,
            "pipeserve_version": __version__,
            "description": pipeline.description,
            "steps": steps,
            "edges": pipeline.edges(),
            "parameters_schema": self.models.parameters_schema,
            "request_schema": self.models.request_schema,
            "outputs": list(pipeline.outputs),
            "ready": self.ready,
            "started_at": iso(self.started_at),
            "uptime": round(time.time() - self.started_at, 3),
        }

    async def openapi_endpoint(self, request: Request) -> Response:
        return JSONBody(self.openapi)

    async def metrics_endpoint(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type=self.metrics.content_type)


def _abandon(inv: Invocation) -> None:
    """Shutdown's grace period ended the invocation: failed, as a batch run would be."""
    inv.cancel()
    step = running_step(inv) or ""
    inv.status = "failed"
    inv.error = StepError(
        step, "interrupted", "the server shut down before the invocation finished", ""
    )


async def _service_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    body: dict[str, Any] = {"success": False, "error": exc.body()}
    # A run's failure keeps the /invoke shape: metadata and timing beside the error.
    for key in ("metadata", "execution_time"):
        if key in body["error"]:
            body[key] = body["error"].pop(key)
    if "metadata" in body:
        body["outputs"] = None
    return JSONBody(body, status_code=exc.status_code, headers=exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return JSONBody(
        {"success": False, "error": {"type": kind, "message": str(exc.detail)}},
        status_code=exc.status_code,
        headers=exc.headers,
    )


def create_app(
    pipeline: Pipeline | str | None = None,
    settings: Settings | None = None,
    **overrides: Any,
) -> Starlette:
    """The ASGI app serving `pipeline` (a `Pipeline`, or a MODULE:ATTRIBUTE spec).

    With no pipeline, `settings.pipeline` (`PIPESERVE_PIPELINE`) names it. Keyword
    overrides set settings, e.g. `create_app(p, max_concurrency=8)`.
    """
    if settings is None:
        settings = Settings(**overrides)
    elif overrides:
        settings = Settings(**{**settings.model_dump(), **overrides})
    target = pipeline if pipeline is not None else settings.pipeline
    if target is None:
        raise ValueError("no pipeline given: pass one, or set PIPESERVE_PIPELINE=MODULE:ATTRIBUTE")
    loaded = load_pipeline(target) if isinstance(target, str) else target
    service = PipelineService(loaded, settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await service.startup()
        try:
            yield
        finally:
            await service.shutdown()

    routes = [
        Route("/invoke", service.invoke, methods=["POST"]),
        Route("/health", service.health, methods=["GET"]),
        Route("/ready", service.ready_endpoint, methods=["GET"]),
        Route("/info", service.info, methods=["GET"]),
        Route("/openapi.json", service.openapi_endpoint, methods=["GET"]),
        Route("/metrics", service.metrics_endpoint, methods=["GET"]),
        *service.runs_api.routes(),
        *ui_routes(),
    ]
    handlers: dict[Any, Callable[[Request, Exception], Any]] = {
        ServiceError: _service_error,
        HTTPException: _http_error,
        # Any other exception: EdgeMiddleware answers the 500, with the request id.
    }
    middleware = []
    origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
    if origins:
        # Outermost, so that preflight requests are answered without a key.
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=origins,
                allow_methods=["GET", "POST"],
                allow_headers=["Authorization", "Content-Type", "X-API-Key", "X-Request-ID"],
                expose_headers=["X-Request-ID", "Retry-After"],
            )
        )
    middleware.append(
        Middleware(
            EdgeMiddleware,
            keys=service.keys,
            metrics=service.metrics,
            max_body_bytes=settings.max_body_bytes,
            metrics_auth=settings.metrics_auth,
            access_log=settings.access_log,
            draining=lambda: service.draining,
            body_timeout=settings.body_timeout,
        )
    )
    app = Starlette(
        routes=routes, lifespan=lifespan, exception_handlers=handlers, middleware=middleware
    )
    app.state.service = service
    return app


def app_from_env() -> Starlette:
    """Factory for `uvicorn --factory service.server.app:app_from_env`: settings from the environment."""
    try:
        settings = Settings()
    except pydantic.ValidationError as exc:
        from service.settings import describe_error

        raise SystemExit(f"pipeserve: {describe_error(exc)}") from None
    configure_logging(settings.log_level, settings.log_format)
    return create_app(settings=settings)
