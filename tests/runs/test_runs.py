"""Batch runs on a real server, over a real SQLite file and the real PostgreSQL."""

from __future__ import annotations

import time
from typing import Any

import httpx
from httpx_sse import connect_sse

from tests.conftest import ServerFactory, ServerProcess

FAST = ("--poll-interval", "0.2")


def start(servers: ServerFactory, database_url: str, spec: str, *args: str) -> ServerProcess:
    return servers.start(spec, "--database-url", database_url, *FAST, *args)


def wait_status(
    http: httpx.Client, run_id: str, statuses: set[str], timeout: float = 20
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        record: dict[str, Any] = http.get(f"/runs/{run_id}").json()
        if record["status"] in statuses or time.monotonic() > deadline:
            assert record["status"] in statuses, record
            return record
        time.sleep(0.05)


def submit(http: httpx.Client, body: dict[str, Any], **headers: str) -> httpx.Response:
    return http.post("/runs", json=body, headers=headers)


def test_submit_follow_and_list(servers: ServerFactory, database_url: str) -> None:
    server = start(servers, database_url, "tests.run_pipelines:three_steps")
    with server.client() as http:
        answer = submit(http, {"parameters": {"seconds": 0.05}})
        assert answer.status_code == 202, answer.text
        body = answer.json()
        assert set(body) == {"run_id", "status", "status_url"} and body["status"] == "queued"
        assert body["status_url"] == f"{server.url}/runs/{body['run_id']}"
        assert answer.headers["location"] == body["status_url"]

        record = wait_status(http, body["run_id"], {"succeeded"})
        assert record["kind"] == "batch" and record["pipeline_name"] == "three_steps"
        assert record["outputs"] == {"total": {"total": 0.1}}
        assert record["error"] is None
        assert record["parameters_used"] == {"seconds": 0.05, "fail": False}
        assert [s["status"] for s in record["steps"].values()] == ["completed"] * 3
        assert record["created_at"] <= record["started_at"] <= record["finished_at"]
        assert record["updated_at"] == record["finished_at"] and record["duration"] > 0.1

        failed = submit(http, {"parameters": {"seconds": 0.01, "fail": True}}).json()
        record = wait_status(http, failed["run_id"], {"failed"})
        assert record["error"]["step"] == "third"
        assert record["error"]["type"] == "RuntimeError" and record["outputs"] is None
        invoked = http.post("/invoke", json={"parameters": {"seconds": 0.01}}).json()

        # Newest first, page by page, each run once.
        seen: list[str] = []
        cursor = None
        while True:
            page = http.get("/runs", params={"limit": 1, **({"cursor": cursor} if cursor else {})})
            assert page.status_code == 200
            seen += [r["run_id"] for r in page.json()["runs"]]
            assert all("outputs" not in r for r in page.json()["runs"])
            cursor = page.json()["next_cursor"]
            if cursor is None:
                break
        assert seen == [invoked["metadata"]["run_id"], failed["run_id"], body["run_id"]]
        only_failed = http.get("/runs", params={"status": "failed"}).json()["runs"]
        assert [r["run_id"] for r in only_failed] == [failed["run_id"]]

        missing = http.get("/runs/00000000-0000-0000-0000-000000000000")
        assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found"
        for query in ({"status": "lost"}, {"limit": "0"}, {"limit": "x"}, {"cursor": "@@"},
                      {"colour": "red"}):  # fmt: skip
            bad = http.get("/runs", params=query)
            assert bad.status_code == 422, (query, bad.text)
            assert bad.json()["error"]["errors"][0]["loc"][0] == "query"
        assert submit(http, {"parameters": {"seconds": "soon"}}).status_code == 422
        assert submit(http, {"webhook_url": "not a url"}).status_code == 422
        assert http.post("/runs", content=b"{").status_code == 400


def read_events(http: httpx.Client, run_id: str, **headers: str) -> list[tuple[int, str, Any]]:
    return [event for event, _ in read_timed_events(http, run_id, **headers)]


def read_timed_events(
    http: httpx.Client, run_id: str, **headers: str
) -> list[tuple[tuple[int, str, Any], float]]:
    """Each event with the time it arrived."""
    with connect_sse(http, "GET", f"/runs/{run_id}/events", headers=headers) as source:
        assert source.response.headers["content-type"].startswith("text/event-stream")
        return [((int(e.id), e.event, e.json()), time.monotonic()) for e in source.iter_sse()]


def test_event_stream_live_replayed_and_resumed(servers: ServerFactory, database_url: str) -> None:
    server = start(servers, database_url, "tests.run_pipelines:three_steps")
    with server.client() as http:
        run_id = submit(http, {"parameters": {"seconds": 0.6}}).json()["run_id"]
        timed = read_timed_events(http, run_id)  # subscribed while the first step sleeps
        live = [event for event, _ in timed]
        # Streamed as they happened, not replayed at the end: the async step between the
        # first's end and its own end awaits 0.6 s.
        finished_at = [t for (_, kind, _), t in timed if kind == "step_finished"]
        assert finished_at[1] - finished_at[0] >= 0.5
        kinds = [kind for _, kind, _ in live]
        assert kinds == [
            "queued",
            "step_started", "step_finished",
            "step_started", "step_finished",
            "step_started", "step_finished",
            "succeeded",
        ]  # fmt: skip
        assert [i for i, _, _ in live] == list(range(1, 9))
        assert [d.get("step") for _, k, d in live if k == "step_finished"] == [
            "first", "second", "third",
        ]  # fmt: skip
        durations = [d["duration"] for _, k, d in live if k == "step_finished"]
        assert durations[0] >= 0.59 and durations[1] >= 0.59
        assert live[-1][2]["status"] == "succeeded"

        # A late subscriber gets the whole story; a reconnect only what it missed.
        assert read_events(http, run_id) == live
        assert read_events(http, run_id, **{"Last-Event-ID": "5"}) == live[5:]
        bad = http.get(f"/runs/{run_id}/events", headers={"Last-Event-ID": "x"})
        assert bad.status_code == 422
        assert http.get("/runs/nope/events").status_code == 404


def test_cancel_queued_running_and_ended(servers: ServerFactory, database_url: str) -> None:
    server = start(servers, database_url, "tests.run_pipelines:slow_async", "--run-workers", "1")
    with server.client() as http:
        running = submit(http, {"parameters": {"seconds": 30}}).json()["run_id"]
        wait_status(http, running, {"running"})
        queued = submit(http, {}).json()["run_id"]

        cancelled = http.post(f"/runs/{queued}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        assert cancelled.json()["started_at"] is None  # it never ran

        t0 = time.monotonic()
        stopped = http.post(f"/runs/{running}/cancel")
        assert stopped.status_code == 200, stopped.text
        # The awaiting step was cancelled, not waited for: it would have taken 30 s.
        assert time.monotonic() - t0 < 15
        record = stopped.json()
        assert record["status"] == "cancelled" and record["cancel_requested"] is True
        assert record["steps"]["wait_async"]["status"] == "cancelled"
        assert record["steps"]["never_after"]["status"] == "pending"  # no further step started
        assert [k for _, k, _ in read_events(http, running)][-1] == "cancelled"

        again = http.post(f"/runs/{running}/cancel")
        assert again.status_code == 409 and again.json()["error"]["type"] == "conflict"
        assert http.post("/runs/unknown/cancel").status_code == 404


def test_idempotency_key_returns_the_same_run(servers: ServerFactory, tmp_path: Any) -> None:
    server = start(servers, f"sqlite:///{tmp_path / 'runs.db'}", "tests.run_pipelines:three_steps")
    with server.client() as http:
        body = {"parameters": {"seconds": 0.01}}
        first = submit(http, body, **{"Idempotency-Key": "nightly-2026-11-23"})
        again = submit(http, body, **{"Idempotency-Key": "nightly-2026-11-23"})
        assert first.status_code == again.status_code == 202
        assert again.json()["run_id"] == first.json()["run_id"]
        assert again.headers["idempotent-replayed"] == "true"
        other = submit(http, {"parameters": {"seconds": 0.02}},
                       **{"Idempotency-Key": "nightly-2026-11-23"})  # fmt: skip
        assert other.status_code == 422
        assert other.json()["error"]["type"] == "idempotency_key_reused"
        assert other.json()["error"]["run_id"] == first.json()["run_id"]
        assert len(http.get("/runs").json()["runs"]) == 1
        assert submit(http, body, **{"Idempotency-Key": "k" * 256}).status_code == 400


def test_full_queue_answers_429(servers: ServerFactory, tmp_path: Any) -> None:
    server = start(
        servers, f"sqlite:///{tmp_path / 'runs.db'}", "tests.run_pipelines:slow",
        "--run-workers", "1", "--max-queued-runs", "2",
    )  # fmt: skip
    with server.client() as http:
        first = submit(http, {"parameters": {"seconds": 30}}).json()["run_id"]
        wait_status(http, first, {"running"})
        queued = [submit(http, {}).status_code for _ in range(2)]
        assert queued == [202, 202]
        full = submit(http, {})
        assert full.status_code == 429 and int(full.headers["retry-after"]) >= 1
        assert full.json()["error"]["type"] == "too_many_requests"
        http.post(f"/runs/{first}/cancel")  # a place frees as the next run starts
        deadline = time.monotonic() + 10
        while submit(http, {}).status_code != 202:
            assert time.monotonic() < deadline
            time.sleep(0.1)


def test_batch_run_past_its_deadline_times_out(servers: ServerFactory, tmp_path: Any) -> None:
    server = start(servers, f"sqlite:///{tmp_path / 'runs.db'}", "tests.run_pipelines:slow_async")
    with server.client() as http:
        run_id = submit(http, {"parameters": {"seconds": 10}, "timeout": 0.3}).json()["run_id"]
        record = wait_status(http, run_id, {"timed_out"})
        assert record["error"]["type"] == "timeout" and record["error"]["step"] == "wait_async"
        assert [k for _, k, _ in read_events(http, run_id)][-1] == "timed_out"


def test_invoke_runs_are_recorded(servers: ServerFactory, tmp_path: Any) -> None:
    server = start(servers, f"sqlite:///{tmp_path / 'runs.db'}", "tests.run_pipelines:three_steps")
    with server.client() as http:
        answer = http.post("/invoke", json={"parameters": {"seconds": 0.01}}).json()
        run_id = answer["metadata"]["run_id"]
        record = http.get(f"/runs/{run_id}").json()  # at once: from the write-behind buffer
        assert record["kind"] == "invoke" and record["status"] == "succeeded"
        assert record["outputs"] == answer["outputs"]
        assert record["steps"] == answer["metadata"]["steps"]
        time.sleep(0.3)
        assert http.get(f"/runs/{run_id}").json() == record  # the same, from the store
        assert [k for _, k, _ in read_events(http, run_id)] == [
            "step_started", "step_finished", "step_started", "step_finished",
            "step_started", "step_finished", "succeeded",
        ]  # fmt: skip

        failed = http.post("/invoke", json={"parameters": {"seconds": 0.01, "fail": True}})
        assert failed.status_code == 500
        record = http.get(f"/runs/{failed.json()['metadata']['run_id']}").json()
        assert record["status"] == "failed" and record["error"]["step"] == "third"

    quiet = start(
        servers, f"sqlite:///{tmp_path / 'quiet.db'}", "tests.run_pipelines:three_steps",
        "--no-record-invocations",
    )  # fmt: skip
    with quiet.client() as http:
        run_id = http.post("/invoke", json={"parameters": {"seconds": 0}}).json()["metadata"]
        time.sleep(0.3)
        assert http.get(f"/runs/{run_id['run_id']}").status_code == 404


def test_retention_prunes_finished_runs(servers: ServerFactory, tmp_path: Any) -> None:
    server = start(
        servers, f"sqlite:///{tmp_path / 'runs.db'}", "tests.run_pipelines:three_steps",
        "--retention-max-runs", "3", "--retention-interval", "0.2",
    )  # fmt: skip
    with server.client() as http:
        ids = [
            http.post("/invoke", json={"parameters": {"seconds": 0}}).json()["metadata"]["run_id"]
            for _ in range(6)
        ]
        deadline = time.monotonic() + 10
        while len(kept := http.get("/runs").json()["runs"]) > 3:
            assert time.monotonic() < deadline, kept
            time.sleep(0.1)
        assert [r["run_id"] for r in kept] == ids[:2:-1]
        assert http.get(f"/runs/{ids[0]}").status_code == 404
