"""Retries: a step's retries seen on a real server, and `POST /runs/{id}/retry`, which
re-runs an ended run from a step, restoring the checkpoints of the steps before it."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

from service.client import Client, ConflictError, NotFoundError, ValidationError
from tests.conftest import ServerFactory
from tests.durable_pipelines import lines
from tests.runs.test_resume import ENDED, FAST, counts, submit_held
from tests.runs.test_runs import read_events, wait_status


def test_a_batch_runs_retries_are_in_its_record_events_and_metrics(
    servers: ServerFactory, tmp_path: Path
) -> None:
    server = servers.start("tests.durable_pipelines:retried", *FAST)
    log = tmp_path / "tries.log"
    with server.client() as http:
        run_id = http.post("/runs", json={"parameters": {"log": str(log)}}).json()["run_id"]
        record = wait_status(http, run_id, ENDED)
        events = read_events(http, run_id)
        metrics = http.get("/metrics").text
    assert record["status"] == "succeeded"
    assert record["steps"]["flaky"]["tries"] == 3
    retrying = [data for _, kind, data in events if kind == "step_retrying"]
    assert [(e["step"], e["tries"], e["error"]["type"]) for e in retrying] == [
        ("flaky", 1, "ConnectionError"),
        ("flaky", 2, "ConnectionError"),
    ]
    assert 0.27 <= retrying[0]["delay"] <= 0.3 and 0.54 <= retrying[1]["delay"] <= 0.6
    # The waits the step really saw, from the times each try wrote to the side file.
    at = [float(line.split()[1]) for line in log.read_text().splitlines()]
    gaps = [b - a for a, b in itertools.pairwise(at)]
    assert all(r["delay"] <= g <= r["delay"] + 0.25 for g, r in zip(gaps, retrying, strict=True))
    assert 'pipeserve_step_retries_total{pipeline="retried",step="flaky"} 2.0' in metrics


def test_invoke_retries_stop_at_the_invocations_deadline(
    servers: ServerFactory, tmp_path: Path
) -> None:
    server = servers.start("tests.durable_pipelines:retries_past_deadline")
    log = tmp_path / "tries.log"
    with server.client() as http:
        answer = http.post("/invoke", json={"parameters": {"log": str(log)}, "timeout": 2.5})
    # Tries at 0, 1 and 2 s; a fourth would start at 3 s, past the deadline: none starts,
    # and the step fails with its own error rather than the deadline's.
    assert answer.status_code == 500, answer.text
    body = answer.json()
    assert body["error"]["type"] == "TimeoutError" and body["error"]["step"] == "always_down"
    assert body["metadata"]["steps"]["always_down"]["tries"] == 3
    assert lines(str(log), "try") == 3


def test_retry_reruns_an_ended_run_from_a_step(servers: ServerFactory, tmp_path: Path) -> None:
    objects = tmp_path / "objects"
    server = servers.start(
        "tests.durable_pipelines:four_steps", *FAST,
        # Every checkpoint in the object store: the retry restores them from there.
        "--checkpoint-url", objects.as_uri(), "--checkpoint-inline-bytes", "0",
    )  # fmt: skip
    with server.client() as http, Client(server.url) as client:
        run_id, log, gate = submit_held(http, tmp_path, "s3")
        # Not ended yet: nothing to retry.
        try:
            client.retry(run_id)
            raise AssertionError("a running run was retried")
        except ConflictError as exc:
            assert exc.status_code == 409 and "running" in exc.message
        gate.touch()
        original = wait_status(http, run_id, ENDED)
        assert original["status"] == "succeeded"
        stored = sorted(p.name for p in (objects / run_id).iterdir())
        assert stored == ["double.1", "finish.1", "hold.1", "start.1"]

        # Every step restored: nothing runs again, the outputs are the same.
        again = client.retry(run_id).wait(timeout=20)
        assert again["status"] == "succeeded" and again["outputs"] == original["outputs"]
        assert {s["status"] for s in again["steps"].values()} == {"restored"}
        assert counts(log, "s1", "s2", "s3", "s4") == [1, 1, 1, 1]

        # From `hold`: it and `finish` run again, `start` and `double` are restored.
        answer = http.post(f"/runs/{run_id}/retry", params={"from_step": "hold"})
        assert answer.status_code == 202, answer.text
        body = answer.json()
        assert body["retry_of"] == run_id and answer.headers["location"] == body["status_url"]
        rerun = wait_status(http, body["run_id"], ENDED)
        assert rerun["status"] == "succeeded" and rerun["outputs"] == original["outputs"]
        steps = rerun["steps"]
        assert [steps[n]["status"] for n in ("start", "double", "hold", "finish")] == [
            "restored", "restored", "completed", "completed",
        ]  # fmt: skip
        assert counts(log, "s1", "s2", "s3", "s4") == [1, 1, 2, 2]
        # The record names checkpoints, never their bytes.
        assert steps["double"]["checkpoint"]["formats"] == ["json"]
        assert "data" not in steps["double"]["checkpoint"]

        for params in ({"from_step": "nope"}, {"step": "hold"}):
            refused = http.post(f"/runs/{run_id}/retry", params=params)
            assert refused.status_code == 422, refused.text
            assert refused.json()["error"]["type"] == "validation_error"
        try:
            client.retry(run_id, from_step="nope")
            raise AssertionError("an unknown step was accepted")
        except ValidationError as exc:
            assert exc.errors[0]["loc"] == ["query", "from_step"]
        missing = "00000000-0000-4000-8000-000000000000"
        assert http.post(f"/runs/{missing}/retry").status_code == 404
        try:
            client.retry(missing)
            raise AssertionError("an unknown run was retried")
        except NotFoundError:
            pass


def test_a_failed_run_is_fixed_and_retried_from_its_checkpoints(
    servers: ServerFactory, tmp_path: Path
) -> None:
    """The issue's story: the run failed on bad data; the source is fixed; retry."""
    server = servers.start("tests.durable_pipelines:checked", *FAST)
    log, gate = tmp_path / "run.log", tmp_path / "fixed"
    with server.client() as http:
        params = {"log": str(log), "gate": str(gate)}
        run_id = http.post("/runs", json={"parameters": params}).json()["run_id"]
        failed = wait_status(http, run_id, ENDED)
        assert failed["status"] == "failed" and failed["error"]["step"] == "check"
        gate.touch()
        retried = http.post(f"/runs/{run_id}/retry").json()
        record = wait_status(http, retried["run_id"], ENDED)
    assert record["status"] == "succeeded", record
    assert record["outputs"] == {"result": {"sum": 42.5, "held": [42, 0.5]}}
    assert counts(log, "s1", "s2", "s3", "s4") == [1, 1, 2, 1]
    assert record["steps"]["start"]["status"] == "restored"


def test_a_resume_off_pipeline_keeps_no_checkpoints(servers: ServerFactory, tmp_path: Path) -> None:
    """`resume=False`: nothing is written per step, and an interrupted run fails."""
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    server = servers.start("tests.run_pipelines:slow", "--database-url", url, *FAST)
    with server.client() as http:
        run_id = http.post("/runs", json={"parameters": {"seconds": 0.1}}).json()["run_id"]
        record = wait_status(http, run_id, ENDED)
        assert record["status"] == "succeeded"
        assert "checkpoint" not in record["steps"]["block"]
        again = http.post(f"/runs/{run_id}/retry").json()
        assert wait_status(http, again["run_id"], ENDED)["steps"]["block"]["status"] == "completed"


def test_an_invocation_with_checkpoints_is_retried_from_them(
    servers: ServerFactory, tmp_path: Path
) -> None:
    """`--checkpoint-invocations`: a failed `/invoke` is retried as a batch run that
    restores the steps the invocation finished; one Idempotency-Key queues one retry."""
    server = servers.start("tests.durable_pipelines:checked", *FAST, "--checkpoint-invocations")
    log, gate = tmp_path / "run.log", tmp_path / "fixed"
    with server.client() as http:
        params = {"log": str(log), "gate": str(gate)}
        failed = http.post("/invoke", json={"parameters": params})
        assert failed.status_code == 500 and failed.json()["error"]["step"] == "check"
        run_id = failed.json()["metadata"]["run_id"]
        assert failed.json()["metadata"]["steps"]["double"]["checkpoint"]["formats"] == ["json"]
        gate.touch()
        headers = {"Idempotency-Key": "fix-1"}
        first = http.post(f"/runs/{run_id}/retry", headers=headers)
        again = http.post(f"/runs/{run_id}/retry", headers=headers)
        assert first.status_code == again.status_code == 202
        assert again.json()["run_id"] == first.json()["run_id"]
        assert again.headers["idempotent-replayed"] == "true"
        record = wait_status(http, first.json()["run_id"], ENDED)
        assert (
            http.post(f"/runs/{run_id}/retry", headers={"Idempotency-Key": "x" * 300}).status_code
            == 400
        )
    assert record["status"] == "succeeded", record
    assert record["kind"] == "batch" and record["steps"]["start"]["status"] == "restored"
    assert counts(log, "s1", "s2", "s3", "s4") == [1, 1, 2, 1]


def test_retention_deletes_a_pruned_runs_objects(servers: ServerFactory, tmp_path: Path) -> None:
    objects = tmp_path / "objects"
    server = servers.start(
        "tests.durable_pipelines:four_steps", *FAST,
        "--checkpoint-url", objects.as_uri(), "--checkpoint-inline-bytes", "0",
        "--retention-max-runs", "1", "--retention-interval", "0.2",
    )  # fmt: skip
    gate = tmp_path / "open"
    gate.touch()
    with server.client() as http:
        ids = []
        for name in ("old", "new"):
            params = {"log": str(tmp_path / f"{name}.log"), "gate": str(gate)}
            ids.append(http.post("/runs", json={"parameters": params}).json()["run_id"])
            assert wait_status(http, ids[-1], ENDED)["status"] == "succeeded"
        deadline = time.monotonic() + 10
        while (objects / ids[0]).exists() and any((objects / ids[0]).iterdir()):
            assert time.monotonic() < deadline, "the pruned run's objects are still there"
            time.sleep(0.1)
        assert http.get(f"/runs/{ids[0]}").status_code == 404
    # The newest run is kept, and so are its objects.
    assert sorted(p.name for p in (objects / ids[1]).iterdir()) == [
        "double.1", "finish.1", "hold.1", "start.1",
    ]  # fmt: skip


def test_without_pickle_no_pickle_is_written_nor_read(
    servers: ServerFactory, tmp_path: Path
) -> None:
    """`hold`'s output is a tuple: only pickle holds it. A server with pickle off neither
    restores the pickle another wrote, nor writes one: the step runs again."""
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    spec = "tests.durable_pipelines:four_steps"
    log, gate = tmp_path / "run.log", tmp_path / "open"
    gate.touch()
    trusting = servers.start(spec, "--database-url", url, *FAST)
    with trusting.client() as http:
        params = {"log": str(log), "gate": str(gate)}
        run_id = http.post("/runs", json={"parameters": params}).json()["run_id"]
        original = wait_status(http, run_id, ENDED)
    assert original["steps"]["hold"]["checkpoint"]["formats"] == ["pickle"]
    trusting.stop()
    wary = servers.start(spec, "--database-url", url, *FAST, "--no-checkpoint-pickle")
    with wary.client() as http:
        retried = http.post(f"/runs/{run_id}/retry").json()["run_id"]
        record = wait_status(http, retried, ENDED)
    assert record["status"] == "succeeded" and record["outputs"] == original["outputs"]
    steps = record["steps"]
    assert [steps[n]["status"] for n in ("start", "double", "hold", "finish")] == [
        "restored", "restored", "completed", "completed",
    ]  # fmt: skip
    assert "checkpoint" not in steps["hold"]  # not written as pickle either
    assert counts(log, "s1", "s2", "s3", "s4") == [1, 1, 2, 2]
