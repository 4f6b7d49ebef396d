"""One pure-ASGI middleware at the edge: request id, auth, body limit, access log, metrics.

One layer rather than five keeps the per-request cost to a few microseconds.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Iterable

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.auth import KeyRing
from service.errors import (
    PayloadTooLarge,
    RequestTimeout,
    ServiceError,
    Unauthorized,
    error_body,
)
from service.observe.logs import log_access
from service.observe.metrics import Metrics
from service.sdk.serialize import dumps

# Probes and the scrape stay out of limits, auth and the access log.
PROBES = frozenset({"/health", "/ready"})
QUIET = PROBES | {"/metrics"}
# Paths a browser must load before it can ask for a key: the probes, the dashboard and
# the API docs pages, and their static assets (under PUBLIC_PREFIX); they hold no data.
PUBLIC = PROBES | {"/", "/docs"}
PUBLIC_PREFIX = "/ui/"

logger = logging.getLogger("pipeserve.app")


async def _send_error(send: Send, exc: ServiceError, request_id: str) -> int:
    """Answer `exc` as JSON, with the request id; returns its status."""
    body = dumps(error_body(exc.body()))
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", request_id.encode()),
        *((k.lower().encode(), v.encode()) for k, v in exc.headers.items()),
    ]
    await send({"type": "http.response.start", "status": exc.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})
    return exc.status_code


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None


def presented_key(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The key from `Authorization: Bearer`, `X-API-Key` or Prophecy's `X-AUTH-TOKEN`."""
    for key, value in headers:
        if key == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        elif key in (b"x-api-key", b"x-auth-token") and value:
            return value.decode("latin-1").strip()
    return None


class EdgeMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        keys: KeyRing,
        metrics: Metrics,
        max_body_bytes: int,
        metrics_auth: bool,
        access_log: bool,
        draining: Callable[[], bool],
        body_timeout: float = 30.0,
    ) -> None:
        self.app = app
        self.body_timeout = body_timeout
        self.draining = draining
        self.keys = keys
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.open_paths = PUBLIC if metrics_auth else PUBLIC | {"/metrics"}
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        headers = scope["headers"]
        raw_id = _header(headers, b"x-request-id")
        request_id = raw_id.decode("latin-1")[:128] if raw_id else os.urandom(8).hex()
        scope.setdefault("state", {})["request_id"] = request_id
        error = self._refuse_key(path, headers)
        if error is None and path not in PROBES:
            error, receive = self._guard_body(headers, receive)

        quiet = path in QUIET
        status = 500
        started = False
        start = time.perf_counter()
        if not quiet:
            self.metrics.in_flight.inc()

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status = message["status"]
                started = True
                extra = [(b"x-request-id", request_id.encode())]
                if self.draining():
                    # No keep-alive while draining: a request sent on an idle connection
                    # just as the server closes it would be lost.
                    extra.append((b"connection", b"close"))
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        try:
            if error is not None:
                status = await _send_error(send, error, request_id)
            else:
                await self.app(scope, receive, send_with_id)
        except ClientDisconnect:
            # The client left mid-body: nothing to answer, and not the server's failure
            # (nginx's 499 in the metrics and the access log).
            status = 499
            logger.debug("client disconnected", extra={"request_id": request_id})
        except Exception as exc:
            if started:
                raise  # uvicorn closes the connection: the response cannot be finished
            answer = exc if isinstance(exc, ServiceError) else ServiceError("internal server error")
            if answer is not exc:
                logger.error("unexpected error", exc_info=exc, extra={"request_id": request_id})
            # Answered here, inside the request id and the keep-alive connection.
            status = await _send_error(send, answer, request_id)
        finally:
            if not quiet:
                self._observe(scope, status, time.perf_counter() - start)

    def _refuse_key(self, path: str, headers: list[tuple[bytes, bytes]]) -> ServiceError | None:
        """The 401 for a request that needs a key and has none that is valid."""
        self.keys.refresh()
        if not self.keys.enabled or path in self.open_paths or path.startswith(PUBLIC_PREFIX):
            return None
        key = presented_key(headers)
        if key is not None and self.keys.accepts(key):
            return None
        error = Unauthorized(
            # With no valid key at all (the last one revoked, or the keys file
            # unreadable), say so: no key the client could send would get in.
            self.keys.refusal
            or (
                "a valid auth key is required: send 'Authorization: Bearer <key>' "
                "or 'X-API-Key: <key>'"
                if key is None
                else "the auth key is not valid"
            )
        )
        error.headers["WWW-Authenticate"] = 'Bearer realm="pipeserve"'
        return error

    def _guard_body(
        self, headers: list[tuple[bytes, bytes]], receive: Receive
    ) -> tuple[ServiceError | None, Receive]:
        """The 413 for a body declared too large; else `receive`, held to the size limit
        (a chunked body, as it arrives) and to the body timeout."""
        length = _header(headers, b"content-length")
        if length is not None and length.isdigit():
            size = int(length)
            if size > self.max_body_bytes:
                limit = self.max_body_bytes
                return PayloadTooLarge(
                    f"the body is larger than the limit of {limit} bytes"
                ), receive
            # With no body, the server reads no more than Content-Length: nothing to time.
            return None, self._timed(receive) if size else receive
        receive = self._limited(receive)
        if _header(headers, b"transfer-encoding") is not None:
            receive = self._timed(receive)
        return None, receive

    def _observe(self, scope: Scope, status: int, duration: float) -> None:
        self.metrics.in_flight.dec()
        route = scope.get("route")
        template = getattr(route, "path", None) or "unmatched"
        self.metrics.observe_request(template, scope["method"], status, duration)
        if self.access_log:
            state = scope["state"]
            log_access(
                scope["method"],
                scope["path"],
                status,
                duration,
                state.get("run_id"),
                state["request_id"],
            )

    def _timed(self, receive: Receive) -> Receive:
        """Answer 408 when the next chunk of the body takes more than `body_timeout` seconds."""
        seconds = self.body_timeout
        done = False

        async def timed() -> Message:
            nonlocal done
            if done:  # after the body: waiting for the disconnect, as long as it takes
                return await receive()
            try:
                async with asyncio.timeout(seconds):
                    message = await receive()
            except TimeoutError:
                raise RequestTimeout(
                    f"the request body stopped arriving: nothing came for {seconds} seconds"
                ) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                done = True
            return message

        return timed

    def _limited(self, receive: Receive) -> Receive:
        """Count a body sent without Content-Length (chunked) against the limit as it arrives."""
        limit = self.max_body_bytes
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise PayloadTooLarge(f"the body is larger than the limit of {limit} bytes")
            return message

        return limited
