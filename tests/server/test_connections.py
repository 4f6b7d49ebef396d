"""Connection hygiene, on real servers: slow heads, the connection limit, 500s and bodies."""

from __future__ import annotations

import http.client
import json
import resource
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.conftest import ServerFactory, ServerProcess

SPEC = "tests.connection_pipelines:fragile"
SLOW_CLIENTS = 1100
SERVER_FDS = 1024
PARTIAL_HEAD = b"POST /invoke HTTP/1.1\r\nHost: x\r\n"
JSON = {"Content-Type": "application/json"}


@dataclass
class Servers:
    plain: ServerProcess  # header and body timeouts of 1 s
    limited: ServerProcess  # 1024 descriptors, header timeout 60 s: only the limit helps


def _limit_descriptors() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (SERVER_FDS, SERVER_FDS))


@pytest.fixture(scope="module")
def pair(module_servers: ServerFactory) -> Servers:
    # Started together: their start-ups overlap.
    plain = module_servers.start(SPEC, "--header-timeout", "1", "--body-timeout", "1", wait=None)
    limited = module_servers.start(
        SPEC, "--header-timeout", "60", wait=None, preexec_fn=_limit_descriptors
    )
    plain.wait_for("/ready")
    limited.wait_for("/ready")
    return Servers(plain, limited)


@pytest.fixture
def descriptors() -> Iterator[None]:
    """Enough descriptors in this process for the slow clients; the old limit after."""
    needed = SLOW_CLIENTS + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"needs {needed} open files, the hard RLIMIT_NOFILE is {hard}: raise it")
    if soft == resource.RLIM_INFINITY or soft >= needed:
        yield
        return
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _connect(server: ServerProcess, timeout: float = 5) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=timeout)


def _read_to_end(sock: socket.socket, timeout: float = 5) -> bytes:
    """Everything until the server closes the connection (a reset counts as closed)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def _log_lines(server: ServerProcess) -> list[dict[str, Any]]:
    return [json.loads(line) for line in server.logs().splitlines() if line.startswith("{")]


def _wait_for_log(
    server: ServerProcess, match: Callable[[dict[str, Any]], bool], timeout: float = 5
) -> list[dict[str, Any]]:
    """The log lines that match, once there is one (logs are flushed every 0.2 s)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [line for line in _log_lines(server) if match(line)]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def _unexpected_errors(server: ServerProcess) -> int:
    return sum(line.get("message") == "unexpected error" for line in _log_lines(server))


def test_slow_clients_do_not_exhaust_descriptors(pair: Servers, descriptors: None) -> None:
    server = pair.limited
    slow: list[socket.socket] = []
    try:
        for _ in range(SLOW_CLIENTS):
            sock = _connect(server)
            sock.sendall(PARTIAL_HEAD)
            slow.append(sock)
        # More half-sent heads than the server has descriptors, and still the probe passes:
        # each new connection closed the oldest idle one.
        for _ in range(5):
            assert httpx.get(server.url + "/health", timeout=5).status_code == 200
        assert _read_to_end(slow[0]) == b""
        assert httpx.post(server.url + "/invoke", json={"parameters": {"x": 4}}).json()[
            "outputs"
        ] == {"y": 4}
    finally:
        for sock in slow:
            sock.close()
    logs = server.logs()
    assert "Too many open files" not in logs and "out of system resource" not in logs


def test_a_stalled_head_is_closed_after_the_header_timeout(pair: Servers) -> None:
    server = pair.plain
    silent = _connect(server)  # sends nothing at all
    partial = _connect(server)
    partial.sendall(PARTIAL_HEAD)
    # A keep-alive connection that served a request, then starts another and stalls.
    kept = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    kept.request("GET", "/health")
    answer = kept.getresponse()
    assert answer.status == 200 and not answer.will_close
    answer.read()
    kept.sock.sendall(PARTIAL_HEAD)
    start = time.monotonic()
    try:
        for sock in (silent, partial, kept.sock):
            assert _read_to_end(sock) == b""
        elapsed = time.monotonic() - start
        # Closed by the header timeout (1 s), not uvicorn's keep-alive timeout (5 s).
        assert 0.5 < elapsed < 4
    finally:
        silent.close()
        partial.close()
        kept.close()
    assert httpx.get(server.url + "/health").status_code == 200


def test_an_oversized_head_gets_431_but_a_large_body_does_not(pair: Servers) -> None:
    server = pair.plain
    with _connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n")
        assert _read_to_end(sock).startswith(b"HTTP/1.1 431 ")
    # A body sent in the same packets as its head is not counted as head.
    body = b'{"parameters": {"x": 2}}' + b" " * 200_000
    response = httpx.post(server.url + "/invoke", content=body, headers=JSON)
    assert response.status_code == 200 and response.json()["outputs"] == {"y": 2}


def test_an_unexpected_error_answers_500_with_the_request_id_on_a_kept_connection(
    pair: Servers,
) -> None:
    server = pair.plain
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.request(
            "POST",
            "/invoke",
            body=b'{"parameters": {"x": 13}}',
            headers={**JSON, "X-Request-ID": "req-500"},
        )
        response = conn.getresponse()
        assert response.status == 500
        assert json.loads(response.read()) == {
            "success": False,
            "error": {"type": "internal_error", "message": "internal server error"},
        }
        assert response.getheader("X-Request-ID") == "req-500"
        assert not response.will_close
        sock = conn.sock
        # The same connection serves the next request.
        conn.request("POST", "/invoke", body=b'{"parameters": {"x": 1}}', headers=JSON)
        again = conn.getresponse()
        assert again.status == 200 and json.loads(again.read())["outputs"] == {"y": 1}
        assert conn.sock is sock
    finally:
        conn.close()
    logged = _wait_for_log(
        server,
        lambda line: (
            line.get("message") == "unexpected error" and line.get("request_id") == "req-500"
        ),
    )
    assert len(logged) == 1 and "thirteen is unlucky" in logged[0]["traceback"]
    assert "Exception in ASGI application" not in server.logs()


def test_a_client_leaving_mid_body_is_a_499_not_an_error(pair: Servers) -> None:
    server = pair.plain
    errors_before = _unexpected_errors(server)
    with _connect(server) as sock:
        sock.sendall(
            b"POST /invoke HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\nX-Request-ID: req-gone\r\n\r\n"
            b'{"parameters": '
        )
        time.sleep(0.2)  # the app now waits for the rest of the body
    access = _wait_for_log(
        server,
        lambda line: (
            line.get("logger") == "pipeserve.access" and line.get("request_id") == "req-gone"
        ),
    )
    assert [line["status"] for line in access] == [499]
    assert _unexpected_errors(server) == errors_before
    assert "Exception in ASGI application" not in server.logs()
    scrape = httpx.get(server.url + "/metrics").text
    assert any(
        line.startswith("pipeserve_http_requests_total{") and 'status="499"' in line
        for line in scrape.splitlines()
    )
    response = httpx.post(server.url + "/invoke", json={"parameters": {"x": 3}})
    assert response.status_code == 200 and response.json()["outputs"] == {"y": 3}


def test_a_stalled_body_gets_408_and_the_connection_closes(pair: Servers) -> None:
    server = pair.plain
    sized = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    chunked = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        sized.putrequest("POST", "/invoke", skip_host=True)
        for name, value in [("Host", "x"), *JSON.items(), ("Content-Length", "100")]:
            sized.putheader(name, value)
        sized.endheaders(b'{"parameters": ')
        chunked.putrequest("POST", "/invoke", skip_host=True)
        for name, value in [("Host", "x"), *JSON.items(), ("Transfer-Encoding", "chunked")]:
            chunked.putheader(name, value)
        chunked.endheaders(b'f\r\n{"parameters": \r\n')
        start = time.monotonic()
        for conn in (sized, chunked):
            response = conn.getresponse()
            assert response.status == 408
            assert response.getheader("Connection") == "close" and response.will_close
            assert response.getheader("X-Request-ID")
            assert json.loads(response.read())["error"]["type"] == "request_timeout"
        assert 0.5 < time.monotonic() - start < 4
    finally:
        sized.close()
        chunked.close()
    assert httpx.get(server.url + "/health").status_code == 200
