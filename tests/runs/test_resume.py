"""Durable runs: a run whose server died, or drained, resumes from its last finished step.

Every step appends to a side file, so each test tells which steps ran and how often. A
step is held (waiting for a file) while the test kills the server under it.
"""

from __future__ import annotations

import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, ServerFactory, ServerProcess
from tests.durable_pipelines import lines
from tests.runs.test_runs import read_events, wait_status

FAST = ("--poll-interval", "0.2", "--run-lease", "1", "--run-workers", "1")
ENDED = {"succeeded", "failed", "cancelled", "timed_out"}


def start(
    servers: ServerFactory, url: str, spec: str, *args: str, env: dict[str, str] | None = None
) -> ServerProcess:
    return servers.start(spec, "--database-url", url, "--name", "durable", *FAST, *args, env=env)


def wait_lines(log: Path, prefix: str, count: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while lines(str(log), prefix) < count:
        assert time.monotonic() < deadline, log.read_text() if log.exists() else "no log"
        time.sleep(0.02)


def counts(log: Path, *prefixes: str) -> list[int]:
    return [lines(str(log), p) for p in prefixes]


def run_through(http: httpx.Client, tmp_path: Path, name: str) -> dict[str, Any]:
    """An uninterrupted run, to compare a resumed run's outputs with."""
    gate = tmp_path / f"{name}.gate"
    gate.touch()
    params = {"log": str(tmp_path / f"{name}.log"), "gate": str(gate)}
    run_id = http.post("/runs", json={"parameters": params}).json()["run_id"]
    record = wait_status(http, run_id, ENDED)
    assert record["status"] == "succeeded", record
    return record


def submit_held(http: httpx.Client, tmp_path: Path, wait_prefix: str) -> tuple[str, Path, Path]:
    """A run held at the step that logs `wait_prefix`: (run id, its log, its gate)."""
    log, gate = tmp_path / "held.log", tmp_path / "held.gate"
    params = {"log": str(log), "gate": str(gate)}
    run_id = http.post("/runs", json={"parameters": params}).json()["run_id"]
    wait_lines(log, wait_prefix, 1)
    return run_id, log, gate


@dataclass(frozen=True)
class Resumed:
    expected: dict[str, Any]  # an uninterrupted run's record
    record: dict[str, Any]  # the resumed run's
    log: Path
    events: list[str]
    metrics: str  # the second server's, once the run ended


def kill_and_resume(
    servers: ServerFactory, tmp_path: Path, spec: str, held_at: str, *args: str
) -> Resumed:
    """A run held at the step that logs `held_at`, its server SIGKILLed under it, the step
    let through, and another server started on the same run store: the run as it ends."""
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    first = start(servers, url, spec, *args)
    with first.client() as http:
        expected = run_through(http, tmp_path, "baseline")
        run_id, log, gate = submit_held(http, tmp_path, held_at)
        held = http.get(f"/runs/{run_id}").json()
        assert held["status"] == "running" and held["attempt"] == 1
    first.stop(signal.SIGKILL)
    gate.touch()
    second = start(servers, url, spec, *args)
    with second.client() as http:
        record = wait_status(http, run_id, ENDED, timeout=40)
        events = [kind for _, kind, _ in read_events(http, run_id)]
        metrics = http.get("/metrics").text
    return Resumed(expected, record, log, events, metrics)


def test_a_killed_run_resumes_from_its_last_finished_step(
    servers: ServerFactory, tmp_path: Path
) -> None:
    resumed = kill_and_resume(servers, tmp_path, "tests.durable_pipelines:four_steps", "s3")
    expected, record, log, events = resumed.expected, resumed.record, resumed.log, resumed.events
    assert record["status"] == "succeeded", record
    assert record["attempt"] == 2
    # Steps 1 and 2 ran once, step 3 twice (it was running when the server died), step 4 once.
    assert counts(log, "s1", "s2", "s3", "s4") == [1, 1, 2, 1]
    assert record["outputs"] == expected["outputs"]
    steps = record["steps"]
    assert steps["start"]["status"] == steps["double"]["status"] == "restored"
    assert steps["start"]["restored_from"] == steps["double"]["restored_from"] == 1
    assert steps["start"]["checkpoint"] == {"formats": ["json"], "bytes": 2}
    assert steps["double"]["checkpoint"]["formats"] == ["json"]
    assert (steps["hold"]["status"], steps["hold"]["tries"]) == ("completed", 1)
    # The tuple crossed no checkpoint here, but has one for the next attempt.
    assert steps["hold"]["checkpoint"]["formats"] == ["pickle"]
    assert steps["finish"]["status"] == "completed"
    assert 'pipeserve_checkpoints_total{outcome="restored"} 2.0' in resumed.metrics
    [interrupted] = record["interrupted_attempts"]
    assert (interrupted["attempt"], interrupted["reason"]) == (1, "lease_expired")
    # The first attempt's events (its last `step_started`, written behind, may have died
    # with it; the `step_finished` of a checkpointed step never does), the requeue, then
    # only the steps the second attempt ran.
    requeued = len(events) - 1 - events[::-1].index("queued")
    assert events[:5] == [
        "queued", "step_started", "step_finished", "step_started", "step_finished"
    ]  # fmt: skip
    assert events[requeued:] == [
        "queued", "step_started", "step_finished", "step_started", "step_finished", "succeeded"
    ]  # fmt: skip


def test_a_surviving_replica_resumes_the_dead_ones_run(
    servers: ServerFactory, tmp_path: Path, postgres_url: str
) -> None:
    spec = "tests.durable_pipelines:four_steps"
    doomed = start(servers, postgres_url, spec)
    with doomed.client() as http:
        expected = run_through(http, tmp_path, "baseline")
        # Alone, the doomed replica is the one that claims the run.
        run_id, log, gate = submit_held(http, tmp_path, "s3")
    survivor = start(servers, postgres_url, spec)
    doomed.stop(signal.SIGKILL)
    gate.touch()
    with survivor.client() as http:
        record = wait_status(http, run_id, ENDED, timeout=30)
    assert (record["status"], record["attempt"]) == ("succeeded", 2), record
    assert counts(log, "s1", "s2", "s3", "s4") == [1, 1, 2, 1]
    assert record["outputs"] == expected["outputs"]
    assert record["steps"]["double"]["status"] == "restored"


def test_a_step_beyond_max_checkpoint_bytes_runs_again_and_so_do_the_next(
    servers: ServerFactory, tmp_path: Path
) -> None:
    # `start`'s output (21) takes 2 bytes; `double`'s dict more than 10.
    spec = "tests.durable_pipelines:four_steps"
    resumed = kill_and_resume(servers, tmp_path, spec, "s3", "--max-checkpoint-bytes", "10")
    record = resumed.record
    assert record["status"] == "succeeded" and record["outputs"] == resumed.expected["outputs"]
    assert counts(resumed.log, "s1", "s2", "s3", "s4") == [1, 2, 2, 1]
    steps = record["steps"]
    assert (steps["start"]["status"], steps["double"]["status"]) == ("restored", "completed")
    assert "checkpoint" not in steps["double"]


def test_a_frame_and_a_fitted_model_are_restored_equal(
    servers: ServerFactory, tmp_path: Path
) -> None:
    resumed = kill_and_resume(servers, tmp_path, "tests.durable_models:training", "wait")
    record, log = resumed.record, resumed.log
    assert record["status"] == "succeeded", record
    # Loaded and trained once: the frame and the model came back from their checkpoints...
    assert counts(log, "load", "train", "wait", "predict") == [1, 1, 2, 1]
    steps = record["steps"]
    assert steps["load"]["status"] == steps["train"]["status"] == "restored"
    assert steps["load"]["checkpoint"]["formats"] == ["parquet"]
    assert steps["train"]["checkpoint"]["formats"] == ["pickle"]
    # ...and predict exactly as the uninterrupted run's did.
    assert record["outputs"] == resumed.expected["outputs"]


def _copy_module(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    modules = tmp_path / "modules"
    modules.mkdir()
    copy = modules / "durable_copy.py"
    shutil.copy(ROOT / "tests" / "durable_pipelines.py", copy)
    return copy, {"PYTHONPATH": f"{modules}:{ROOT}"}


@pytest.mark.parametrize("pipeline", ["four_steps", "restarts"])
def test_a_changed_pipeline_does_not_resume_a_run_of_the_old_one(
    servers: ServerFactory, tmp_path: Path, pipeline: str
) -> None:
    copy, env = _copy_module(tmp_path)
    spec = f"durable_copy:{pipeline}"
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    first = start(servers, url, spec, env=env)
    with first.client() as http:
        old_version = http.get("/info").json()["version"]
        run_id, log, gate = submit_held(http, tmp_path, "s3")
    first.stop(signal.SIGKILL)
    gate.touch()
    # The next release changed a step: its code, hence the pipeline's version.
    copy.write_text(copy.read_text().replace("return 21", "return 20 + 1"))
    second = start(servers, url, spec, env=env)
    with second.client() as http:
        new_version = http.get("/info").json()["version"]
        record = wait_status(http, run_id, ENDED, timeout=30)
    assert new_version != old_version
    if pipeline == "four_steps":
        assert record["status"] == "failed", record
        error = record["error"]
        assert error["type"] == "version_changed"
        assert error["versions"] == {"checkpoints": [old_version], "server": new_version}
        assert old_version in error["message"] and new_version in error["message"]
        assert counts(log, "s1", "s2", "s3", "s4") == [1, 1, 1, 0]
    else:
        # on_version_change="restart": from the first step, with the new code only.
        assert record["status"] == "succeeded", record
        assert counts(log, "s1", "s2", "s3", "s4") == [2, 2, 2, 1]
        assert all(s["status"] == "completed" for s in record["steps"].values())


def test_a_run_interrupted_max_attempts_times_gives_up(
    servers: ServerFactory, tmp_path: Path
) -> None:
    spec = "tests.durable_pipelines:four_steps"
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    server = start(servers, url, spec)
    with server.client() as http:
        run_id, log, _ = submit_held(http, tmp_path, "s3")
    for attempt in (1, 2, 3):
        wait_lines(log, "s3", attempt)
        server.stop(signal.SIGKILL)
        server = start(servers, url, spec)
    with server.client() as http:
        record = wait_status(http, run_id, ENDED, timeout=30)
    assert record["status"] == "failed", record
    error = record["error"]
    assert error["type"] == "too_many_attempts"
    assert [a["attempt"] for a in error["attempts"]] == [1, 2, 3]
    assert record["interrupted_attempts"] == error["attempts"]
    # Never looped: the held step ran once per attempt, the steps before it once.
    assert counts(log, "s1", "s2", "s3", "s4") == [1, 1, 3, 0]


def test_a_drained_run_resumes_on_the_next_server(servers: ServerFactory, tmp_path: Path) -> None:
    spec = "tests.durable_pipelines:four_steps"
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    first = start(servers, url, spec, "--grace-period", "0.5")
    with first.client() as http:
        run_id, log, gate = submit_held(http, tmp_path, "s3")
    assert first.stop(signal.SIGTERM) == 0
    gate.touch()
    second = start(servers, url, spec)
    with second.client() as http:
        record = wait_status(http, run_id, ENDED, timeout=30)
    assert (record["status"], record["attempt"]) == ("succeeded", 2), record
    assert record["interrupted_attempts"][0]["reason"] == "drained"
    assert counts(log, "s1", "s2", "s3", "s4") == [1, 1, 2, 1]
