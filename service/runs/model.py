"""The run model: a run as the store holds it, how a run ends, and its events. Statuses
are `service.status`'s vocabulary.

A stored run is a `Run` (one row of the store, immutable once read). What is written is
typed by what the write sets: a finished `/invoke` run, which the write-behind flush
inserts whole (`FinishedRun`), and the end of a batch run, which leaves the columns it
does not name as they were (`RunEnd`). Times are epoch seconds; outputs are JSON text.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Required, TypedDict

from service.status import RunKind, RunStatus, StepStatus, WebhookStatus


class StepCheckpoint(TypedDict):
    formats: list[str]
    bytes: int


class StepInfo(TypedDict, total=False):
    """A step's record on its run. `started_at` is a datetime while the run is in this
    process and ISO 8601 text once read back from the store: orjson writes both alike.
    `tries`: calls of the step's function (0: it did not run). A step a resumed run
    restored has `restored_from`, the attempt whose checkpoint it took."""

    status: Required[StepStatus]
    started_at: Required[datetime | str | None]
    duration: Required[float | None]
    tries: int
    restored_from: int
    checkpoint: StepCheckpoint


Steps = dict[str, StepInfo]


class RunEnd(TypedDict, total=False):
    """How a run ended, as the store records it. Every end says the required columns; an
    end that never ran the pipeline (it could not start, or its process died) leaves the
    others out, and `RunStore.finish` keeps their value."""

    status: Required[RunStatus]
    error: Required[dict[str, Any] | None]
    steps: Required[Steps | None]
    finished_at: Required[float]
    updated_at: Required[float]
    duration: Required[float | None]
    parameters_used: dict[str, Any] | None
    outputs: str | None
    outputs_omitted: bool
    started_at: float | None
    webhook_status: WebhookStatus | None
    webhook_next_at: float | None


class FinishedRun(TypedDict):
    """A finished `/invoke` run, as the write-behind flush inserts it: all at once."""

    run_id: str
    deployment_name: str
    pipeline_name: str
    pipeline_version: str
    kind: RunKind
    status: RunStatus
    request: dict[str, Any]
    parameters_used: dict[str, Any] | None
    steps: Steps | None
    outputs: str | None
    outputs_omitted: bool
    error: dict[str, Any] | None
    created_at: float
    started_at: float | None
    finished_at: float
    updated_at: float
    duration: float | None


# The columns the flush fills, in the order of their insert statement.
FINISHED_COLUMNS: Final[tuple[str, ...]] = tuple(FinishedRun.__annotations__)


@dataclass(frozen=True, slots=True, kw_only=True)
class Run:
    """A run as the store holds it: one row of `pipeserve_runs` (a test checks that the
    fields are its columns). A run not written yet (an `/invoke` run still in the
    write-behind buffer, a batch run being submitted) has no `seq`."""

    run_id: str
    deployment_name: str
    pipeline_name: str
    pipeline_version: str
    kind: RunKind
    status: RunStatus
    request: dict[str, Any]
    created_at: float
    updated_at: float
    seq: int | None = None
    parameters_used: dict[str, Any] | None = None
    steps: Steps | None = None
    # A listing leaves them out (None): they can be large.
    outputs: str | None = None
    outputs_omitted: bool = False
    error: dict[str, Any] | None = None
    idempotency_key: str | None = None
    request_hash: str | None = None
    webhook_url: str | None = None
    webhook_status: WebhookStatus | None = None
    webhook_attempts: list[dict[str, Any]] | None = None
    webhook_next_at: float | None = None
    # The lease: which process executes the run, until when (it renews it meanwhile).
    owner: str | None = None
    lease_expires_at: float | None = None
    # 0 until claimed; each claim adds one (a requeued run is claimed again).
    attempt: int = 0
    cancel_requested: bool = False
    started_at: float | None = None
    finished_at: float | None = None
    duration: float | None = None
    # When lease recovery ended or requeued the run on a guess that its process had died;
    # cleared when that process's own end arrives after all (see `RunStore.finish`).
    recovered_at: float | None = None
    # The attempts that ended without the run ending (their process died or drained):
    # each `{"attempt", "owner", "started_at", "ended_at", "reason"}`.
    attempts: list[dict[str, Any]] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Checkpoint:
    """A finished step's outputs as a batch run stored them (one row of
    `pipeserve_checkpoints`): their bytes, or where the object store has them."""

    run_id: str
    step: str
    attempt: int
    pipeline_version: str
    formats: list[str]
    sizes: list[int]
    created_at: float
    data: bytes | None = None
    location: str | None = None

    @property
    def size(self) -> int:
        return sum(self.sizes)


@dataclass(frozen=True, slots=True)
class Claim:
    """A queued run this process claimed, and the id its next event takes."""

    run: Run
    next_event_id: int


@dataclass(frozen=True, slots=True)
class NewEvent:
    """One event of a run's stream; `event_id` counts from 1 in each run."""

    run_id: str
    event_id: int
    kind: str
    data: Mapping[str, Any]
    at: float
