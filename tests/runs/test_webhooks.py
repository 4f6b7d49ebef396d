"""Webhooks to a real local HTTP receiver: signed, retried after a failure, recorded."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.runs.webhooks import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from tests.conftest import ServerFactory

SECRET = "whsec-test-3f9a"


class Receiver:
    """An HTTP server that fails its first `failures` deliveries, then accepts."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.deliveries: list[tuple[dict[str, str], bytes, int]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = 500 if len(receiver.deliveries) < receiver.failures else 204
                receiver.deliveries.append((dict(self.headers), body, status))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/pipeserve"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(failures=1)
    yield r
    r.close()


def wait_for(predicate: Any, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := predicate()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
    return found


def test_webhook_is_signed_retried_and_recorded(
    servers: ServerFactory, tmp_path: Path, receiver: Receiver
) -> None:
    server = servers.start(
        "tests.run_pipelines:three_steps",
        "--database-url", f"sqlite:///{tmp_path / 'runs.db'}", "--poll-interval", "0.2",
        env={"PIPESERVE_WEBHOOK_SECRET": SECRET},
    )  # fmt: skip
    with server.client() as http:
        run_id = http.post(
            "/runs", json={"parameters": {"seconds": 0.01}, "webhook_url": receiver.url}
        ).json()["run_id"]
        record = wait_for(
            lambda: (
                (r := http.get(f"/runs/{run_id}").json())["webhook"]["status"] == "delivered" and r
            )
        )
    assert record["status"] == "succeeded"  # the failing first delivery changed nothing
    attempts = record["webhook"]["attempts"]
    assert [a["status_code"] for a in attempts] == [500, 204]
    assert attempts[0]["error"] == "HTTP 500" and attempts[1]["error"] is None
    assert [d[2] for d in receiver.deliveries] == [500, 204]
    # The retry waited its backoff (1 s), not a tight loop.
    first, second = (datetime.fromisoformat(a["at"]) for a in attempts)
    assert (second - first).total_seconds() >= 0.9

    headers, body, _ = receiver.deliveries[1]
    assert verify(SECRET, body, headers[TIMESTAMP_HEADER], headers[SIGNATURE_HEADER])
    assert not verify("another secret", body, headers[TIMESTAMP_HEADER], headers[SIGNATURE_HEADER])
    assert not verify(SECRET, body + b" ", headers[TIMESTAMP_HEADER], headers[SIGNATURE_HEADER])
    assert headers["X-Pipeserve-Event"] == "run.succeeded"
    delivered = json.loads(body)
    assert delivered["run_id"] == run_id and delivered["outputs"] == {"total": {"total": 0.02}}


def test_webhook_needs_a_secret_and_never_fails_a_run(
    servers: ServerFactory, tmp_path: Path
) -> None:
    unsigned = servers.start(
        "tests.run_pipelines:three_steps", "--database-url", f"sqlite:///{tmp_path / 'a.db'}"
    )
    answer = httpx.post(unsigned.url + "/runs", json={"webhook_url": "http://127.0.0.1:9/"})
    assert answer.status_code == 422
    assert "PIPESERVE_WEBHOOK_SECRET" in answer.json()["error"]["message"]

    server = servers.start(
        "tests.run_pipelines:three_steps",
        "--database-url", f"sqlite:///{tmp_path / 'b.db'}", "--poll-interval", "0.2",
        "--webhook-max-attempts", "2",
        env={"PIPESERVE_WEBHOOK_SECRET": SECRET},
    )  # fmt: skip
    with server.client() as http:
        # Nothing listens on port 9 of loopback: every attempt fails.
        run_id = http.post(
            "/runs", json={"parameters": {"seconds": 0}, "webhook_url": "http://127.0.0.1:9/x"}
        ).json()["run_id"]
        record = wait_for(
            lambda: (r := http.get(f"/runs/{run_id}").json())["webhook"]["status"] == "failed" and r
        )
    assert record["status"] == "succeeded"
    assert len(record["webhook"]["attempts"]) == 2
    assert "ConnectError" in record["webhook"]["attempts"][0]["error"]
    assert SECRET not in server.logs()
