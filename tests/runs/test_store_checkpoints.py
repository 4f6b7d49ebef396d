"""Step checkpoints in the run store, on a real SQLite file and the real PostgreSQL:
written with their event, read back, copied to a retry, deleted with their run (and the
object store's copies once no run names them)."""

from __future__ import annotations

import time
from pathlib import Path

from service.runs.checkpoint_objects import ObjectStore
from service.runs.model import Checkpoint
from service.runs.store import NewEvent
from tests.runs.test_store import ended, opened, queued_run


def checkpoint(
    run_id: str, step: str, data: bytes | None, location: str | None = None
) -> Checkpoint:
    size = len(data) if data is not None else 3
    return Checkpoint(
        run_id=run_id, step=step, attempt=1, pipeline_version="v1", formats=["json"],
        sizes=[size], created_at=time.time(), data=data, location=location,
    )  # fmt: skip


def test_checkpoints_are_written_with_their_event_and_read_back(database_url: str) -> None:
    store = opened(database_url)
    run, first = queued_run()
    store.submit(run, first, 10)
    claim = store.claim_next("me", time.time(), 30)
    assert claim is not None
    blob = bytes(range(256)) * 40  # every byte value: the column is binary, not text
    finished = NewEvent(run.run_id, 2, "step_finished", {"step": "a"}, time.time())
    saved = [checkpoint(run.run_id, "a", blob)]
    store.write_batch([], [finished], {}, time.time(), saved)
    # A flush retried after a lost commit answer writes nothing twice.
    store.write_batch([], [finished], {}, time.time(), saved)
    [found] = store.checkpoints(run.run_id)
    assert (found.step, found.data, found.sizes, found.size) == ("a", blob, [len(blob)], len(blob))
    assert [e.kind for e in store.events_after(run.run_id, 0)] == ["queued", "step_finished"]
    summaries = store.checkpoint_summaries(run.run_id)
    assert summaries == {
        "a": {"attempt": 1, "pipeline_version": "v1", "formats": ["json"], "bytes": len(blob)},
    }  # fmt: skip
    assert store.forget_checkpoints(run.run_id) == []
    assert store.checkpoints(run.run_id) == []
    store.close()


def test_a_retry_takes_copies_and_objects_go_when_no_run_names_them(
    database_url: str, tmp_path: Path
) -> None:
    objects = ObjectStore((tmp_path / "objects").as_uri())
    store = opened(database_url)
    original, first = queued_run()
    store.submit(original, first, 10)
    assert store.claim_next("me", time.time(), 30) is not None
    location = objects.put(f"{original.run_id}/big.1", b"big")
    store.write_batch([], [], {}, time.time(), [
        checkpoint(original.run_id, "small", b"[1]"),
        checkpoint(original.run_id, "big", None, location),
        checkpoint(original.run_id, "late", b"[2]"),
    ])  # fmt: skip
    terminal = NewEvent(original.run_id, 2, "succeeded", {}, time.time())
    assert store.finish(original.run_id, "me", ended(), terminal)

    retry, retry_first = queued_run()
    store.submit(retry, retry_first, 10, reuse=(original.run_id, ["small", "big"]))
    copied = {c.step: c for c in store.checkpoints(retry.run_id)}
    assert sorted(copied) == ["big", "small"]
    assert copied["big"].location == location and copied["small"].data == b"[1]"

    # Pruning the original keeps the object: the retry still names it.
    assert store.prune(time.time() + 1, None) == (1, [])
    assert store.checkpoints(original.run_id) == []
    assert objects.get(location) == b"big"
    # Once the retry ends and is pruned, nothing names it: the caller deletes it.
    assert store.claim_next("me", time.time(), 30) is not None
    assert store.finish(
        retry.run_id, "me", ended(), NewEvent(retry.run_id, 2, "succeeded", {}, time.time())
    )
    deleted, orphaned = store.prune(time.time() + 1, None)
    assert (deleted, orphaned) == (1, [location])
    objects.delete(orphaned)
    assert not (tmp_path / "objects" / original.run_id / "big.1").exists()
    objects.delete(orphaned)  # already gone: fine
    store.close()
