"""Graceful shutdown under load: SIGTERM loses no request, and on_cleanup runs."""

from __future__ import annotations

import contextlib
import http.client
import signal
import threading
import time
from pathlib import Path

import httpx

from tests.conftest import ServerFactory
from tests.runs.test_runs import wait_status


def test_sigterm_under_load_loses_no_request(servers: ServerFactory, tmp_path: Path) -> None:
    server = servers.start(
        "tests.sample_pipelines:slow_with_state",
        "--shutdown-delay", "1", "--grace-period", "10",
        env={"TEST_MARKER_DIR": str(tmp_path)},
    )  # fmt: skip
    outcomes: list[str] = []
    lock = threading.Lock()
    stop_sending = threading.Event()

    def client() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            while not stop_sending.is_set():
                try:
                    response = http.post("/invoke", json={"parameters": {"seconds": 0.3}})
                    outcome = str(response.status_code)
                    if response.status_code == 503:
                        # As a load balancer would: this replica is going; send elsewhere.
                        assert response.headers["retry-after"]
                        assert response.headers["connection"] == "close"
                        stop_sending.set()
                except httpx.ConnectError:
                    outcome = "refused"  # never accepted: the listener had closed
                except httpx.TransportError as exc:
                    outcome = f"lost: {exc!r}"
                with lock:
                    outcomes.append(outcome)

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    ready = httpx.get(server.url + "/ready")
    assert ready.status_code == 503 and ready.json()["status"] == "draining"
    assert server.proc.wait(30) == 0
    stop_sending.set()
    for t in threads:
        t.join(30)

    lost = [o for o in outcomes if o.startswith("lost")]
    assert not lost, lost
    assert outcomes.count("200") >= 8
    assert "503" in outcomes  # new work during the drain was refused, with Retry-After
    assert (tmp_path / f"cleanup-{server.proc.pid}").read_text() == "cleanup loaded\n"


def test_a_stuck_sync_step_does_not_hold_shutdown_past_the_grace_period(
    servers: ServerFactory, tmp_path: Path
) -> None:
    args = ("--grace-period", "2", "--shutdown-delay", "0", "--run-lease", "30")
    env = {"TEST_MARKER_DIR": str(tmp_path)}
    server = servers.start("tests.sample_pipelines:slow_with_state", *args, env=env)
    answers: list[httpx.Response] = []

    def invoke() -> None:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            answers.append(http.post("/invoke", json={"parameters": {"seconds": 40}}))

    caller = threading.Thread(target=invoke)
    caller.start()
    with server.client() as http:
        run_id = http.post("/runs", json={"parameters": {"seconds": 40}}).json()["run_id"]
        wait_status(http, run_id, {"running"})
    time.sleep(0.3)  # the invocation's step is in its thread
    pid = server.proc.pid
    sent = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(2 + 5) == 0
    assert time.monotonic() - sent < 2 + 5
    caller.join(10)

    # The caller got the documented JSON error, not a plain-text 500 or a reset.
    [answer] = answers
    assert answer.status_code == 503, answer.text
    body = answer.json()
    assert body["success"] is False and body["error"]["type"] == "unavailable"
    assert body["metadata"]["status"] == "failed"
    assert answer.headers["x-request-id"]
    assert (tmp_path / f"cleanup-{pid}").read_text() == "cleanup loaded\n"

    # The batch run was failed as interrupted (the pipeline is not safe to retry).
    again = servers.start("tests.sample_pipelines:slow_with_state", *args, env=env)
    with again.client() as http:
        record = http.get(f"/runs/{run_id}").json()
        assert record["status"] == "failed" and record["error"]["type"] == "interrupted"
        invoked = http.get(f"/runs/{body['metadata']['run_id']}").json()
        assert invoked["status"] == "failed" and invoked["error"]["type"] == "interrupted"


def test_sigterm_without_shutdown_delay_resets_no_request(servers: ServerFactory) -> None:
    """With no shutdown delay the listener closes at SIGTERM: a connection it never
    accepted is refused, but a request on a connection it accepted (an idle keep-alive
    one, or one still in the listener's backlog) is answered, 200 or 503, never reset."""
    server = servers.start(
        "tests.sample_pipelines:slow_with_state", "--shutdown-delay", "0", "--grace-period", "5"
    )
    outcomes: list[str] = []
    lock = threading.Lock()

    def client(keep_alive: bool) -> None:
        limits = httpx.Limits(max_keepalive_connections=None if keep_alive else 0)
        with httpx.Client(base_url=server.url, timeout=30, limits=limits) as http:
            while server.proc.poll() is None:
                try:
                    response = http.post("/invoke", json={"parameters": {"seconds": 0}})
                    outcome = str(response.status_code)
                except httpx.ConnectError:
                    outcome = "refused"  # nothing was sent: a listener closed or closing
                except httpx.TransportError as exc:
                    outcome = f"lost: {exc!r} keep={keep_alive} {time.time() - signalled_at[0]:.3f} s after SIGTERM"
                with lock:
                    outcomes.append(outcome)

    signalled_at = [0.0]
    # Fresh connections and keep-alive ones, as fast as they go, across the signal.
    threads = [threading.Thread(target=client, args=(n % 2 == 0,)) for n in range(8)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    signalled_at[0] = time.time()
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(30) == 0
    for t in threads:
        t.join(30)

    lost = [o for o in outcomes if o.startswith("lost")]
    assert not lost, lost
    assert outcomes.count("200") >= 100 and "refused" in outcomes


def test_an_idle_keep_alive_connection_answers_a_request_sent_just_after_sigterm(
    servers: ServerFactory,
) -> None:
    server = servers.start("tests.sample_pipelines:echo", "--shutdown-delay", "0")
    host, port = server.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    connection.request("GET", "/health")
    first = connection.getresponse()
    assert first.status == 200 and first.getheader("connection") is None
    body = first.read()
    # The connection is idle when the listener closes; the client cannot know.
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    connection.request("GET", "/health")  # on the same socket: raises if it was closed
    second = connection.getresponse()
    assert second.status == 200 and second.getheader("connection") == "close"
    assert second.read() == body
    connection.close()
    assert server.proc.wait(10) == 0


def test_each_worker_drains_on_sigterm(servers: ServerFactory) -> None:
    """With --workers, each worker process builds its app with the CLI's hooks: SIGTERM
    (the supervisor passes it on) drains every worker before it shuts down."""
    server = servers.start("tests.sample_pipelines:echo", "--workers", "2", "--shutdown-delay", "3")
    server.wait_all_workers_ready()
    server.proc.send_signal(signal.SIGTERM)

    def status() -> str | None:
        with contextlib.suppress(httpx.TransportError):
            answer: str = httpx.get(server.url + "/ready", timeout=1).json()["status"]
            return answer
        return None

    # The supervisor passes it on to each worker, at once; on a loaded machine a worker
    # may take a moment to act on it, so the sample starts once one has, a moment later.
    deadline = time.monotonic() + 5.0
    while status() != "draining":
        assert time.monotonic() < deadline, "no worker started draining"
        time.sleep(0.02)
    time.sleep(0.3)
    deadline = time.monotonic() + 2.0
    answers: list[str] = []
    while time.monotonic() < deadline and len(answers) < 20:
        with contextlib.suppress(httpx.TransportError):
            answers.append(httpx.get(server.url + "/ready", timeout=1).json()["status"])
        time.sleep(0.05)
    # Whichever worker answers, it is draining, and still serving: none has closed yet.
    assert answers and set(answers) == {"draining"}, answers
    assert server.proc.wait(30) == 0
