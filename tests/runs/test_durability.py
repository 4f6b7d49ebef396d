"""No run is lost: SIGKILL, SIGTERM, and replicas sharing one PostgreSQL database."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ServerFactory, ServerProcess
from tests.runs.test_runs import read_events, wait_status

FAST = ("--poll-interval", "0.2", "--run-lease", "1", "--run-workers", "1")


def start(servers: ServerFactory, url: str, spec: str, *args: str) -> ServerProcess:
    return servers.start(spec, "--database-url", url, "--name", "durable", *FAST, *args)


def submit_three(http: httpx.Client, seconds: float) -> list[str]:
    ids = [
        http.post("/runs", json={"parameters": {"seconds": seconds}}).json()["run_id"]
        for _ in range(3)
    ]
    wait_status(http, ids[0], {"running"})
    time.sleep(0.3)  # step records are written behind, every 0.1 s
    assert [http.get(f"/runs/{i}").json()["status"] for i in ids[1:]] == ["queued", "queued"]
    return ids


@pytest.mark.parametrize(
    ("spec", "statuses", "attempts"),
    [
        # The interrupted run fails as `interrupted`; the queued ones run after the restart.
        ("tests.run_pipelines:slow", ["failed", "succeeded", "succeeded"], [1, 1, 1]),
        # A pipeline safe to retry runs the interrupted run again.
        ("tests.run_pipelines:slow_retry_safe", ["succeeded"] * 3, [2, 1, 1]),
    ],
)
def test_sigkill_loses_no_run(
    servers: ServerFactory, tmp_path: Path, spec: str, statuses: list[str], attempts: list[int]
) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    first = start(servers, url, spec)
    with first.client() as http:
        ids = submit_three(http, 1.0)
    first.stop(signal.SIGKILL)

    second = start(servers, url, spec)
    with second.client() as http:
        records = [wait_status(http, i, {"succeeded", "failed"}) for i in ids]
        assert [r["status"] for r in records] == statuses
        assert [r["attempt"] for r in records] == attempts
        if statuses[0] == "failed":
            assert records[0]["error"]["type"] == "interrupted"
            assert records[0]["steps"]["block"]["status"] == "failed"
            assert [k for _, k, _ in read_events(http, ids[0])] == [
                "queued", "step_started", "failed"
            ]  # fmt: skip
        else:
            assert [k for _, k, _ in read_events(http, ids[0])] == [
                "queued", "step_started", "queued", "step_started", "step_finished", "succeeded"
            ]  # fmt: skip


def test_sigterm_finishes_the_running_run_and_keeps_the_queued(
    servers: ServerFactory, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    first = start(servers, url, "tests.run_pipelines:slow", "--grace-period", "10")
    with first.client() as http:
        ids = submit_three(http, 1.0)
    assert first.stop(signal.SIGTERM) == 0

    second = start(servers, url, "tests.run_pipelines:slow")
    with second.client() as http:
        assert http.get(f"/runs/{ids[0]}").json()["status"] == "succeeded"
        records = [wait_status(http, i, {"succeeded", "failed"}) for i in ids]
        assert [r["status"] for r in records] == ["succeeded"] * 3
        assert [r["attempt"] for r in records] == [1, 1, 1]


def test_replicas_share_runs_and_take_over_from_a_dead_one(
    servers: ServerFactory, postgres_url: str
) -> None:
    a = start(servers, postgres_url, "tests.run_pipelines:slow")
    b = start(servers, postgres_url, "tests.run_pipelines:slow")
    with a.client() as on_a, b.client() as on_b:
        # Submitted through one, read and followed through the other.
        run_id = on_a.post("/runs", json={"parameters": {"seconds": 0.5}}).json()["run_id"]
        assert on_b.get(f"/runs/{run_id}").status_code == 200
        events = read_events(on_b, run_id)
        assert [k for _, k, _ in events] == ["queued", "step_started", "step_finished",
                                             "succeeded"]  # fmt: skip
        assert run_id in [r["run_id"] for r in on_b.get("/runs").json()["runs"]]
        invoked = on_a.post("/invoke", json={"parameters": {"seconds": 0}}).json()
        time.sleep(0.3)  # the write-behind flush
        assert on_b.get(f"/runs/{invoked['metadata']['run_id']}").json()["kind"] == "invoke"

        # Each replica runs one at a time: four long runs keep both busy.
        ids = [
            on_a.post("/runs", json={"parameters": {"seconds": 3}}).json()["run_id"]
            for _ in range(4)
        ]
        running: dict[str, Any] = {}
        deadline = time.monotonic() + 20
        while len(running) < 2:
            assert time.monotonic() < deadline
            running = {
                i: r for i in ids if (r := on_b.get(f"/runs/{i}").json())["status"] == "running"
            }
            time.sleep(0.1)
        a.stop(signal.SIGKILL)

        records = [wait_status(on_b, i, {"succeeded", "failed"}, timeout=40) for i in ids]
    statuses = sorted(r["status"] for r in records)
    assert statuses == ["failed", "succeeded", "succeeded", "succeeded"], records
    dead = next(r for r in records if r["status"] == "failed")
    assert dead["error"]["type"] == "interrupted"


@pytest.mark.parametrize(
    ("spec", "status", "attempt"),
    [
        # Past the grace period the running run fails as interrupted...
        ("tests.run_pipelines:slow", "failed", 1),
        # ...or, for a pipeline safe to retry, goes back to the queue and runs again.
        ("tests.run_pipelines:slow_retry_safe", "succeeded", 2),
    ],
)
def test_sigterm_past_the_grace_period_interrupts_the_running_run(
    servers: ServerFactory, tmp_path: Path, spec: str, status: str, attempt: int
) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    first = start(servers, url, spec, "--grace-period", "0.5")
    with first.client() as http:
        run_id = http.post("/runs", json={"parameters": {"seconds": 2.0}}).json()["run_id"]
        wait_status(http, run_id, {"running"})
    assert first.stop(signal.SIGTERM) == 0

    second = start(servers, url, spec)
    with second.client() as http:
        record = wait_status(http, run_id, {"succeeded", "failed"})
        assert (record["status"], record["attempt"]) == (status, attempt)
        if status == "failed":
            assert record["error"]["type"] == "interrupted"
            assert record["steps"]["block"]["status"] == "failed"
        kinds = [k for _, k, _ in read_events(http, run_id)]
        assert kinds[:2] == ["queued", "step_started"] and kinds[-1] == status
