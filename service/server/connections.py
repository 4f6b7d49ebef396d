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
  the new one is closed instead;
- at shutdown, a keep-alive connection closes only once it has told its client so: the
  response under way says `Connection: close` if its head is not sent yet; otherwise, and
  on an idle connection, it stays open for `SHUTDOWN_LINGER` seconds and answers a request
  already on its way (with `Connection: close`), instead of closing under it, which the
  client would see as a reset or an empty response.

`close_listeners` closes the listening sockets at shutdown without resetting the connections
waiting in their backlogs.

`uvicorn.Config(http=functools.partial(GuardedHttpToolsProtocol, limits=...))` selects it;
the limits are a frozen dataclass, so the partial pickles into `--workers` processes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import resource
import socket
import time
from collections.abc import Callable, Iterable
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
# How long an idle connection stays open at shutdown for a request the client may have sent
# before it could know: about a round trip across a cluster, many times over.
SHUTDOWN_LINGER = 0.5


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
        self.closing = False  # shutting down: the next response is the last
        self.linger_timer: asyncio.TimerHandle | None = None

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
        if self.linger_timer is not None:
            self.linger_timer.cancel()
        super().connection_lost(exc)

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown, without closing a connection under a request the
        client has sent or is about to send: a client that was not told `Connection:
        close` may reuse the connection at any moment."""
        self.closing = True
        self._close_gracefully()

    def _close_gracefully(self) -> None:
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            # Idle: a request may be on its way already; answer it, then close.
            if self.linger_timer is None:
                self.linger_timer = self.loop.call_later(SHUTDOWN_LINGER, self.transport.close)
        elif not cycle.response_started:
            cycle.keep_alive = False  # its response says `Connection: close`
        # Else its response began without saying so: once complete, the connection is idle
        # (`on_response_complete`).

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.closing:
            self._close_gracefully()

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
        if self.closing:
            # The request the connection lingered for: the last one on it.
            if self.linger_timer is not None:
                self.linger_timer.cancel()
                self.linger_timer = None
            self.cycle.keep_alive = False

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
        super().shutdown()

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


async def close_listeners(
    servers: Iterable[asyncio.Server], protocol_factory: Callable[[], asyncio.Protocol]
) -> None:
    """Close the listeners without resetting a connection in their backlogs.

    Closing a listening socket resets every connection the kernel has completed but the
    server has not accepted yet, though its client may have sent a request already. So the
    server stops accepting while a duplicate descriptor keeps each listener open; what is
    in its backlog is accepted here and served by `protocol_factory`; then it closes."""
    held = [socket.socket(fileno=os.dup(sock.fileno())) for s in servers for sock in s.sockets]
    for server in servers:
        server.close()
    accepted: list[socket.socket] = []
    for listener in held:
        with listener:
            listener.setblocking(False)
            while True:
                try:
                    accepted.append(listener.accept()[0])
                except (BlockingIOError, InterruptedError):
                    break
    loop = asyncio.get_running_loop()
    for connection in accepted:
        try:
            await loop.connect_accepted_socket(protocol_factory, connection)
        except OSError:
            connection.close()  # its client went away meanwhile
