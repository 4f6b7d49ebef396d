"""The run store on a real SQLite file and the real PostgreSQL: schema, claims, recovery."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from service.runs import migrations
from service.runs.migrations import HEAD, VERSION_TABLE
from service.runs.model import FinishedRun, Run, RunEnd
from service.runs.store import PRUNE_BATCH, NewEvent, QueueFull, RunStore, metadata, normalize_url
from service.runs.tables import runs


def queued_run(deployment: str = "d") -> tuple[Run, NewEvent]:
    run_id = str(uuid.uuid4())
    now = time.time()
    run = Run(
        run_id=run_id, deployment_name=deployment, pipeline_name="p", pipeline_version="v1",
        kind="batch", status="queued", request={"parameters": {}}, created_at=now,
        updated_at=now,
    )  # fmt: skip
    return run, NewEvent(run_id, 1, "queued", {"run_id": run_id}, now)


def ended() -> RunEnd:
    now = time.time()
    return {"status": "succeeded", "error": None, "steps": None, "finished_at": now,
            "updated_at": now, "duration": None}  # fmt: skip


def opened(url: str, deployment: str = "d") -> RunStore:
    store = RunStore(url, deployment)
    store.migrate()
    return store


def _schema(conn: Any) -> dict[str, Any]:
    """What a database holds of our tables: columns, keys, indexes and constraints."""
    inspector = sa.inspect(conn)
    return {
        table: {
            "columns": [
                (c["name"], str(c["type"]), c["nullable"], c.get("default"))
                for c in inspector.get_columns(table)
            ],
            "primary_key": inspector.get_pk_constraint(table)["constrained_columns"],
            "indexes": sorted(
                (i["name"], tuple(i["column_names"]), i["unique"])
                for i in inspector.get_indexes(table)
            ),
            "unique": sorted(
                tuple(u["column_names"]) for u in inspector.get_unique_constraints(table)
            ),
        }
        for table in sorted([*metadata.tables, VERSION_TABLE])
    }


def test_a_run_has_a_field_for_each_column() -> None:
    assert {f.name for f in dataclasses.fields(Run)} == {c.name for c in runs.c}


def test_a_new_database_is_built_as_the_migrations_build_it(database_url: str) -> None:
    # A new store is made from the tables' definitions and stamped, without Alembic; an
    # existing one is upgraded by Alembic. Both roads must end at the schema the code uses.
    store = opened(database_url)
    store.migrate()  # a second time: nothing to do
    with store.engine.begin() as conn:
        built = _schema(conn)
        assert migrations.current_revision(conn) == HEAD
        metadata.drop_all(conn)
        conn.execute(sa.text(f"DROP TABLE {VERSION_TABLE}"))
    with store.engine.begin() as conn:
        migrations.upgrade_with_alembic(conn)
    with store.engine.connect() as conn:
        assert _schema(conn) == built
        context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        assert context.get_current_revision() == HEAD
        assert compare_metadata(context, metadata) == []
    store.close()


def test_a_new_database_does_not_import_alembic(tmp_path: Path) -> None:
    # Alembic stays resident once imported (~10 MiB of the server's idle RSS).
    code = (
        "import sys; from service.runs.store import RunStore; "
        f"store = RunStore('sqlite:///{tmp_path / 'new.db'}', 'd'); store.migrate(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'alembic'))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def test_head_names_the_newest_migration() -> None:
    scripts = ScriptDirectory(str(Path(migrations.__file__).parent))
    assert scripts.get_current_head() == HEAD


def test_concurrent_claims_never_take_a_run_twice(database_url: str) -> None:
    """Two stores (as two processes would have) and many threads race for 60 runs."""
    stores = [opened(database_url), RunStore(database_url, "d")]
    submitted = set()
    for _ in range(60):
        run, event = queued_run()
        stores[0].submit(run, event, max_queued=1000)
        submitted.add(run.run_id)
    claimed: list[str] = []
    lock = threading.Lock()

    def worker(store: RunStore, owner: str) -> None:
        while (claim := store.claim_next(owner, time.time(), 30)) is not None:
            assert claim.run.status == "running" and claim.run.owner == owner
            assert claim.next_event_id == 2
            with lock:
                claimed.append(claim.run.run_id)

    threads = [
        threading.Thread(target=worker, args=(stores[i % 2], f"owner-{i}")) for i in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(claimed) == sorted(submitted)
    for store in stores:
        store.close()


def test_queue_limit_and_idempotency_keys_are_per_deployment(database_url: str) -> None:
    store, other = opened(database_url, "a"), opened(database_url, "b")
    for _ in range(2):
        store.submit(*queued_run("a"), max_queued=2)
    with pytest.raises(QueueFull):
        store.submit(*queued_run("a"), max_queued=2)
    other.submit(*queued_run("b"), max_queued=2)  # another deployment's queue

    run, event = queued_run("b")
    run = dataclasses.replace(run, idempotency_key="same")
    _, created = other.submit(run, event, max_queued=10)
    duplicate, event2 = queued_run("b")
    duplicate = dataclasses.replace(duplicate, idempotency_key="same")
    found, created_twice = other.submit(duplicate, event2, max_queued=10)
    assert created and not created_twice and found.run_id == run.run_id
    assert other.get(run.run_id) is not None and store.get(run.run_id) is None
    store.close()
    other.close()


def test_expired_leases_are_failed_or_requeued(database_url: str) -> None:
    store = opened(database_url)
    for _ in range(2):
        store.submit(*queued_run(), max_queued=10)
    claimed_dead = store.claim_next("dead-process", time.time() - 100, lease=30)
    claimed_alive = store.claim_next("live-process", time.time(), lease=30)
    assert claimed_dead is not None and claimed_alive is not None
    dead, alive = claimed_dead.run.run_id, claimed_alive.run.run_id

    requeued, failed = store.recover_expired(time.time(), requeue=False, owner="recovering-process")
    assert (requeued, failed) == ([], [dead])
    record = store.get(dead)
    assert record is not None and record.status == "failed"
    assert record.error is not None and record.error["type"] == "interrupted"
    assert [e.kind for e in store.events_after(dead, 0)] == ["queued", "failed"]
    running = store.get(alive)
    assert running is not None and running.status == "running"

    # A lost lease: the owner's late result is refused.
    assert not store.finish(dead, "dead-process", ended(),
                            NewEvent(dead, 3, "succeeded", {}, time.time()))  # fmt: skip

    store.renew_leases("live-process", [alive], time.time() - 100, lease=30)
    requeued, failed = store.recover_expired(time.time(), requeue=True, owner="recovering-process")
    assert (requeued, failed) == ([alive], [])
    again = store.claim_next("next-process", time.time(), lease=30)
    assert again is not None and again.run.run_id == alive and again.run.attempt == 2
    store.close()


def test_a_flush_writes_every_finished_invocation(database_url: str) -> None:
    # The insert compiled once and run as the driver's executemany, JSON columns included.
    store = opened(database_url)
    now = time.time()
    rows: list[FinishedRun] = [
        {
            "run_id": str(uuid.uuid4()), "deployment_name": "d", "pipeline_name": "p",
            "pipeline_version": "v1", "kind": "invoke",
            "status": "failed" if i % 10 == 0 else "succeeded",
            "request": {"parameters": {"i": i}}, "parameters_used": {"i": i},
            "steps": {"s": {"status": "completed", "started_at": None, "duration": i / 1000}},
            "outputs": None if i % 10 == 0 else f'{{"n": {i}}}', "outputs_omitted": i == 7,
            "error": {"type": "step_failed", "step": "s"} if i % 10 == 0 else None,
            "created_at": now + i, "started_at": now + i, "finished_at": now + i + 0.5,
            "updated_at": now + i + 0.5, "duration": 0.5,
        }
        for i in range(70)
    ]  # fmt: skip
    store.write_batch([store.prepare_finished(r)[0] for r in rows], [], {}, now)
    for row in rows:
        found = store.get(row["run_id"])
        assert found is not None
        assert {name: getattr(found, name) for name in row} == row
    listed = store.list_runs("failed", 100, None)
    assert [r.run_id for r in listed] == [rows[i]["run_id"] for i in range(60, -1, -10)]
    store.close()


def test_pruning_deletes_in_many_transactions(database_url: str) -> None:
    # More doomed runs than one pruning transaction takes: each call deletes a batch, and
    # together they delete every one, and only them.
    store = opened(database_url)
    now = time.time()
    total = 2 * PRUNE_BATCH + 203
    rows: list[FinishedRun] = [
        {
            "run_id": str(uuid.uuid4()), "deployment_name": "d", "pipeline_name": "p",
            "pipeline_version": "v1", "kind": "invoke", "status": "succeeded",
            "request": {"parameters": {}}, "parameters_used": {}, "steps": {},
            "outputs": None, "outputs_omitted": False, "error": None, "created_at": now + i,
            "started_at": now + i, "finished_at": now + i, "updated_at": now + i,
            "duration": 0.0,
        }
        for i in range(total)
    ]  # fmt: skip
    store.write_batch([store.prepare_finished(r)[0] for r in rows], [], {}, now)
    queued, first = queued_run()
    store.submit(queued, first, 100)
    other = opened(database_url, "other")
    kept_elsewhere, event = queued_run("other")
    other.submit(kept_elsewhere, event, 100)

    cutoff = store.prune_cutoff(100)
    assert cutoff is not None
    deleted = [store.prune(now - 86400, cutoff)[0] for _ in range(4)]
    assert deleted == [PRUNE_BATCH, PRUNE_BATCH, total - 100 - 2 * PRUNE_BATCH, 0]
    listed = store.list_runs(None, 1000, None)
    # Newest first: the queued run, not finished, is kept though created before them all.
    assert [r.run_id for r in listed] == [
        *(r["run_id"] for r in rows[: total - 101 : -1]),
        queued.run_id,
    ]
    assert store.prune_cutoff(100) is None
    # By age alone: every finished run, none of the other deployment's.
    assert store.prune(now + total, None) == (100, [])
    assert [r.run_id for r in store.list_runs(None, 1000, None)] == [queued.run_id]
    assert other.get(kept_elsewhere.run_id) is not None
    store.close()
    other.close()


def test_pruning_sends_the_same_statements_whatever_the_batch(database_url: str) -> None:
    # Drivers cache prepared statements by their text; an IN list of each length is one
    # more (SQLite's cache grew by ~120 KiB a pruning), so a batch's ids are padded.
    store = opened(database_url)
    sent: set[str] = set()
    sa.event.listen(store.engine, "before_cursor_execute", lambda *a: sent.add(a[2]))
    now = time.time()
    for size in (1, 2, 7, 30):
        rows: list[FinishedRun] = [
            {
                "run_id": str(uuid.uuid4()), "deployment_name": "d", "pipeline_name": "p",
                "pipeline_version": "v1", "kind": "invoke", "status": "succeeded",
                "request": {}, "parameters_used": {}, "steps": {}, "outputs": None,
                "outputs_omitted": False, "error": None, "created_at": now,
                "started_at": now, "finished_at": now, "updated_at": now, "duration": 0.0,
            }
            for _ in range(size)
        ]  # fmt: skip
        store.write_batch([store.prepare_finished(r)[0] for r in rows], [], {}, now)
        sent.clear()
        assert store.prune(now + 1, None) == (size, [])
        if size == 1:
            first = set(sent)
        assert sent == first
    store.close()


def test_postgres_urls_use_psycopg_3() -> None:
    assert normalize_url("postgresql://u:p@h/db") == "postgresql+psycopg://u:p@h/db"
    assert normalize_url("postgres://h/db") == "postgresql+psycopg://h/db"
    assert normalize_url("postgresql+psycopg://h/db") == "postgresql+psycopg://h/db"
    assert normalize_url("sqlite:///x.db") == "sqlite:///x.db"


def _event(run_id: str, event_id: int, kind: str) -> NewEvent:
    return NewEvent(run_id, event_id, kind, {"run_id": run_id}, time.time())


def test_the_runs_own_end_wins_over_a_recovery_guess(database_url: str) -> None:
    # A process cut off from the database (an outage) while its run went on: another
    # process failed the run as `interrupted` and wrote its event with the next free id.
    store = opened(database_url)
    store.submit(*queued_run(), max_queued=10)
    claimed = store.claim_next("cut-off", time.time() - 100, lease=30)
    assert claimed is not None and claimed.next_event_id == 2
    run_id = claimed.run.run_id
    assert store.recover_expired(time.time(), requeue=False, owner="cut-off") == ([], [])
    assert store.recover_expired(time.time(), requeue=False, owner="other") == ([], [run_id])

    # The cut-off process's buffered events arrive, numbered as it numbered them (2, 3):
    # the id 2 is taken, so they come after the guess; writing them twice writes them once.
    late = [_event(run_id, 2, "step_started"), _event(run_id, 3, "step_finished")]
    store.write_batch([], late, {}, time.time())
    store.write_batch([], late, {}, time.time())
    # Its heartbeat: the run is still its own (failed on a guess, not taken over).
    assert store.renew_leases("cut-off", [run_id], time.time(), lease=30) == (set(), set())
    assert store.finish(run_id, "cut-off", ended(), _event(run_id, 4, "succeeded"), attempt=1)
    record = store.get(run_id)
    assert record is not None and record.status == "succeeded"
    assert record.recovered_at is None
    stored = store.events_after(run_id, 0)
    assert [(e.event_id, e.kind) for e in stored] == [
        (1, "queued"), (2, "failed"), (3, "step_started"), (4, "step_finished"), (5, "succeeded"),
    ]  # fmt: skip
    store.close()


@pytest.mark.parametrize("claimed_again", [False, True])
def test_a_requeued_runs_late_end_counts_until_another_process_claims_it(
    database_url: str, claimed_again: bool
) -> None:
    store = opened(database_url)
    store.submit(*queued_run(), max_queued=10)
    first = store.claim_next("cut-off", time.time() - 100, lease=30)
    assert first is not None
    run_id = first.run.run_id
    assert store.recover_expired(time.time(), requeue=True, owner="other") == ([run_id], [])
    # Requeued: no longer running under its first process, which stops heartbeating it.
    assert store.renew_leases("cut-off", [run_id], time.time(), lease=30) == (set(), {run_id})
    if claimed_again:
        again = store.claim_next("other", time.time(), lease=30)
        assert again is not None and again.run.attempt == 2
    late_end = store.finish(run_id, "cut-off", ended(), _event(run_id, 9, "succeeded"), attempt=1)
    record = store.get(run_id)
    assert record is not None
    if claimed_again:
        # The second attempt runs: the first one's end is not the run's.
        assert not late_end and record.status == "running"
    else:
        # Nobody took it since: the first attempt's end is the run's, and it is not run twice.
        assert late_end and record.status == "succeeded"
        assert store.claim_next("other", time.time(), lease=30) is None
    store.close()


def test_a_record_json_cannot_carry_is_stored_without_those_values(database_url: str) -> None:
    store = opened(database_url)
    now = time.time()
    too_big = 2**64
    row: FinishedRun = {
        "run_id": str(uuid.uuid4()), "deployment_name": "d", "pipeline_name": "p",
        "pipeline_version": "v1", "kind": "invoke", "status": "succeeded",
        "request": {"parameters": {"x": too_big}}, "parameters_used": {"x": too_big},
        "steps": {}, "outputs": '{"y": 1}', "outputs_omitted": False, "error": None,
        "created_at": now, "started_at": now, "finished_at": now, "updated_at": now,
        "duration": 0.0,
    }  # fmt: skip
    good: FinishedRun = {
        **row,
        "run_id": str(uuid.uuid4()),
        "request": {},
        "parameters_used": {},
    }
    prepared, omitted = store.prepare_finished(row)
    assert omitted == ["request", "parameters_used"]
    store.write_batch([prepared, store.prepare_finished(good)[0]], [], {}, now)
    found = store.get(row["run_id"])
    assert found is not None and found.parameters_used is None
    assert "64-bit" in found.request["omitted"]
    assert found.error is not None and found.error["type"] == "record_incomplete"
    assert store.get(good["run_id"]) is not None
    store.close()
