"""Guarding the HTTP connections: a request head must arrive in time and stay small, and a
process holds no more connections than its file descriptors allow.

uvicorn closes idle keep-alive connections, but waits forever for a request head that is
never finished: a thousand slow clients then hold a thousand descriptors, and once the
process runs out of them even the liveness probe fails. `GuardedHttpToolsProtocol` is
uvicorn's httptools protocol with three more rules:

- a request head (request line and headers) must arrive within `header_timeout` seconds of
  the connection opening or of the request's first byte;
- a head larger than `max_head_bytes` is refused with 431;
- past `max_connections`, a new connection closes the oldest one that has no request in
  flight (still reading a head, or idle between requests), so that a new client such as
  the kubelet's probe is always served; when every connection has a request in flight,
  the new one is closed instead.

`uvicorn.Config(http=functools.partial(GuardedHttpToolsProtocol, limits=...))` selects it;
the limits are a frozen dataclass, so the partial pickles into `--workers` processes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import resource
import time
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

logger = logging.getLogger("pipeserve.connections")

# Descriptors kept for everything but client connections: the run store, log and other
# files, the thread pool, the listening socket.
FD_RESERVE = 128
MIN_CONNECTIONS = 16
MAX_HEAD_BYTES = 65_536


def default_max_connections(reserve: int = FD_RESERVE) -> int | None:
    """Connections one process may hold: its soft RLIMIT_NOFILE less `reserve` (at least
    16); None when the limit is unlimited."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return None
    return max(MIN_CONNECTIONS, soft - reserve)


_HEAD_TOO_LARGE_BODY = (
    b'{"success":false,"error":{"type":"header_too_large",'
    b'"message":"the request head is larger than the limit of %d bytes"}}' % MAX_HEAD_BYTES
)
_HEAD_TOO_LARGE_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(_HEAD_TOO_LARGE_BODY)).encode()),
    (b"connection", b"close"),
]


async def _head_too_large(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 431, "headers": _HEAD_TOO_LARGE_HEADERS})
    await send({"type": "http.response.body", "body": _HEAD_TOO_LARGE_BODY})


@dataclasses.dataclass(frozen=True)
class ConnectionLimits:
    header_timeout: float = 10.0
    max_connections: int | None = None  # None: no limit
    max_head_bytes: int = MAX_HEAD_BYTES


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: ConnectionLimits,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = limits
        self.opened_at = 0.0
        self.head_timer: asyncio.TimerHandle | None = None
        self.reading_head = True
        self.head_bytes = 0  # of the head so far, counted by whole chunks
        self.chunk_bytes = 0  # of the chunk being parsed
        self.refused = False

    # -- the connection ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.opened_at = time.monotonic()
        self._arm_head_timer()
        limit = self.limits.max_connections
        if limit is not None and len(self.connections) > limit:
            self._make_room()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        self.chunk_bytes = len(data)
        super().data_received(data)
        if self.reading_head and not self.transport.is_closing():
            # The head did not complete in `data`: all of it is head.
            self.head_bytes += len(data)
            if self.head_bytes > self.limits.max_head_bytes:
                self._refuse_head()

    # -- parser callbacks --------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.reading_head = True
        self.head_bytes = 0
        self._arm_head_timer()

    def on_headers_complete(self) -> None:
        self.reading_head = False
        self._cancel_head_timer()
        limit = self.limits.max_head_bytes
        # The head is at most the earlier chunks and this one; only a large chunk (which
        # may hold a body too) needs the head measured.
        if self.head_bytes + self.chunk_bytes > limit and self._head_size() > limit:
            # uvicorn's own way (as for its concurrency limit): the request is parsed as
            # usual, and answered by another app.
            app, self.app = self.app, _head_too_large
            try:
                super().on_headers_complete()
            finally:
                self.app = app
            return
        super().on_headers_complete()

    # -- the rules ---------------------------------------------------------------------

    def _head_size(self) -> int:
        return len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)

    def busy(self) -> bool:
        """A request is in flight: its head has arrived and its response is not complete."""
        return self.cycle is not None and not self.cycle.response_complete

    def _arm_head_timer(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
        self.head_timer = self.loop.call_later(self.limits.header_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def _head_timed_out(self) -> None:
        self.head_timer = None
        if self.transport.is_closing():
            return
        logger.debug("closing a connection whose request head did not arrive in time")
        # Like uvicorn's own shutdown: close now if nothing is in flight, else after the
        # response under way (a pipelined head that stalls behind it).
        self.shutdown()

    def _refuse_head(self) -> None:
        self._cancel_head_timer()
        self.refused = True
        logger.debug("refusing a request head larger than %d bytes", self.limits.max_head_bytes)
        if self.busy():
            # A pipelined head behind a response under way: no answer can go in between.
            self.cycle.keep_alive = False
            return
        head = [STATUS_LINE[431]]
        head += [name + b": " + value + b"\r\n" for name, value in _HEAD_TOO_LARGE_HEADERS]
        self.transport.write(b"".join([*head, b"\r\n", _HEAD_TOO_LARGE_BODY]))
        self.transport.close()

    def _make_room(self) -> None:
        """Past the limit: close the oldest connection with no request in flight, or this
        one if every other has one."""
        oldest: GuardedHttpToolsProtocol | None = None
        for connection in self.connections:
            if (
                connection is not self
                and isinstance(connection, GuardedHttpToolsProtocol)
                and not connection.busy()
                and (oldest is None or connection.opened_at < oldest.opened_at)
            ):
                oldest = connection
        victim = oldest or self
        logger.debug(
            "at the limit of %s connections: closing %s",
            self.limits.max_connections,
            "the oldest idle one" if oldest is not None else "the new one",
        )
        victim._drop()

    def _drop(self) -> None:
        # Out of the count at once: the transport may take a moment to close.
        self.connections.discard(self)
        self._cancel_head_timer()
        self.refused = True
        self.transport.close()
