"""A database outage: a private PostgreSQL stopped and restarted under two live replicas.

While it is down, the store routes answer 503 with Retry-After, /ready says the store is
degraded and /invoke keeps serving; once it is back, every record made meanwhile is written,
and a batch run that finished during the outage is recorded as it really ended.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServerFactory, free_port, require_binary, start_together
from tests.runs.test_runs import read_events, wait_status


@dataclass
class PrivatePostgres:
    """A PostgreSQL server of the test's own, on a free port, that it can stop and start."""

    data_dir: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _pg_ctl(self, *args: str) -> None:
        command = [
            require_binary("pg_ctl", "postgresql"), "-D", str(self.data_dir), "-w", "-t", "60",
            *args,
        ]  # fmt: skip
        subprocess.run(_as_postgres(command), check=True, capture_output=True, timeout=90)

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.data_dir}"
        self._pg_ctl("-o", options, "-l", str(self.data_dir / "server.log"), "start")

    def stop(self) -> None:
        # `fast`: open connections are cut, as when a database fails over or restarts.
        self._pg_ctl("-m", "fast", "stop")


def _as_postgres(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root (CI runs as root): run it as `postgres` there."""
    if os.geteuid() != 0:
        return command
    return [require_binary("runuser", "util-linux"), "-u", "postgres", "--", *command]


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    initdb = require_binary("initdb", "postgresql")
    # Not under pytest's tmp_path: the `postgres` user must be able to reach the directory.
    root = Path(tempfile.mkdtemp(prefix="pipeserve-pg-"))
    data_dir = root / "data"
    data_dir.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(data_dir, "postgres")
    subprocess.run(
        _as_postgres([initdb, "-D", str(data_dir), "-U", "postgres", "-A", "trust", "--no-sync"]),
        check=True,
        capture_output=True,
        timeout=120,
    )
    server = PrivatePostgres(data_dir, free_port())
    server.start()
    try:
        yield server
    finally:
        try:
            server.stop()
        except subprocess.CalledProcessError:
            pass  # already stopped
        shutil.rmtree(root, ignore_errors=True)


def test_a_database_outage_loses_nothing_and_records_the_true_end(
    servers: ServerFactory, private_postgres: PrivatePostgres
) -> None:
    # Leases of 2 s expire during the 5 s outage: after it, lease recovery sees the run
    # as abandoned, although its process is alive and has finished it.
    args = ["--database-url", private_postgres.url, "--name", "outage",
            "--poll-interval", "0.2", "--run-lease", "2", "--run-workers", "1"]  # fmt: skip
    spec = "tests.run_pipelines:slow"
    urls = start_together(servers, {"a": (spec, args, {}), "b": (spec, args, {})})
    with (
        httpx.Client(base_url=urls["a"], timeout=30) as a,
        httpx.Client(base_url=urls["b"], timeout=30) as b,
    ):
        run_id = a.post("/runs", json={"parameters": {"seconds": 3}}).json()["run_id"]
        wait_status(a, run_id, {"running"})

        private_postgres.stop()
        outage_started = time.monotonic()
        refused = a.get("/runs")
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["type"] == "store_unavailable"
        assert int(refused.headers["Retry-After"]) > 0
        assert a.post("/runs", json={}).status_code == 503
        assert a.get(f"/runs/{run_id}").status_code == 503
        ready = a.get("/ready")
        assert ready.status_code == 200 and ready.json()["store"] == "degraded"
        # The real-time path does not need the store.
        during = [a.post("/invoke", json={"parameters": {"seconds": 0.01}}) for _ in range(20)]
        assert all(r.status_code == 200 for r in during)
        invoked = [r.json()["metadata"]["run_id"] for r in during]
        time.sleep(max(0.0, 5 - (time.monotonic() - outage_started)))
        private_postgres.start()

        deadline = time.monotonic() + 15
        while a.get("/runs").status_code != 200:
            assert time.monotonic() < deadline, "GET /runs did not recover"
            time.sleep(0.2)
        record = wait_status(b, run_id, {"succeeded"}, timeout=20)
        assert record["attempt"] == 1
        assert record["outputs"] == {"slept": 3}
        assert a.get("/ready").json()["store"] == "ok"

        # The other replica reads only the database: every /invoke record made during
        # the outage was written once it was back.
        deadline = time.monotonic() + 10
        missing = invoked
        while missing and time.monotonic() < deadline:
            missing = [i for i in missing if b.get(f"/runs/{i}").status_code != 200]
            time.sleep(0.2)
        assert missing == []
        assert all(b.get(f"/runs/{i}").json()["status"] == "succeeded" for i in invoked)

        events = read_events(b, run_id)
        ids = [event_id for event_id, _, _ in events]
        assert ids == sorted(set(ids)), events
        kinds = [kind for _, kind, _ in events]
        assert kinds[0] == "queued" and kinds[-1] == "succeeded", kinds
        assert "step_finished" in kinds, kinds
        # New work is taken again: a run submitted now runs to its end.
        after = b.post("/runs", json={"parameters": {"seconds": 0.1}}).json()["run_id"]
        assert wait_status(b, after, {"succeeded"})["status"] == "succeeded"
