"""The Starlette app: serves one pipeline, loaded once per process.

`create_app` builds it with no process-wide side effect (no signal handler, no exit, no
environment or `sys.path` edit): it can be embedded in any ASGI server or driven in-process
(httpx's `ASGITransport`). The `pipeserve serve` process adds what only a process may do
through `ProcessHooks`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response

from service.errors import ServiceError, error_body, for_status
from service.sdk.loader import load_pipeline
from service.sdk.pipeline import Pipeline
from service.sdk.serialize import dumps
from service.server.about import About
from service.server.invoke import Invoker
from service.server.lifecycle import PipelineService, ProcessHooks
from service.server.middleware import EdgeMiddleware
from service.server.openapi import build_openapi
from service.server.responses import JSONBody, error_response
from service.server.routes import route_table, starlette_routes
from service.server.runs_routes import RunsAPI
from service.server.ui import ui_routes
from service.settings import Settings


async def _service_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    # A run's failure keeps the /invoke shape: `error_body` moves its metadata beside.
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    # Starlette's own answers (no route, a method the route does not take), in our body.
    declared = for_status(exc.status_code)
    kind = declared.error_type if declared is not None else "http_error"
    return JSONBody(
        error_body({"type": kind, "message": str(exc.detail)}),
        status_code=exc.status_code,
        headers=exc.headers,
    )


def _middleware(service: PipelineService) -> list[Middleware]:
    settings = service.settings
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
    return middleware


def create_app(
    pipeline: Pipeline | str | None = None,
    settings: Settings | None = None,
    *,
    hooks: ProcessHooks | None = None,
    **overrides: Any,
) -> Starlette:
    """The ASGI app serving `pipeline` (a `Pipeline`, or a MODULE:ATTRIBUTE spec).

    With no pipeline, `settings.pipeline` (`PIPESERVE_PIPELINE`) names it. Keyword
    overrides set settings, e.g. `create_app(p, max_concurrency=8)`. `hooks`: what the
    process owning the app does when it has started, is ready, or cannot serve (none).
    """
    if settings is None:
        settings = Settings(**overrides)
    elif overrides:
        settings = Settings(**{**settings.model_dump(), **overrides})
    target = pipeline if pipeline is not None else settings.pipeline
    if target is None:
        raise ValueError("no pipeline given: pass one, or set PIPESERVE_PIPELINE=MODULE:ATTRIBUTE")
    loaded = load_pipeline(target) if isinstance(target, str) else target
    service = PipelineService(loaded, settings, hooks or ProcessHooks())
    invoker = Invoker(service)
    runs_api = RunsAPI(service.runs, service.models, service.accepting)
    about = About(service, b"")
    table = route_table(invoker, about, runs_api)
    about.openapi = dumps(build_openapi(table, service.models, service.deployment_name))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await service.startup()
        try:
            yield
        finally:
            await service.shutdown()

    handlers: dict[Any, Callable[[Request, Exception], Any]] = {
        ServiceError: _service_error,
        HTTPException: _http_error,
        # Any other exception: EdgeMiddleware answers the 500, with the request id.
    }
    app = Starlette(
        routes=[*starlette_routes(table), *ui_routes()],
        lifespan=lifespan,
        exception_handlers=handlers,
        middleware=_middleware(service),
    )
    app.state.service = service
    app.state.invoker = invoker
    return app
