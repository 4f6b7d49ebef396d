"""A retry of an ended run (`POST /runs/{id}/retry`): what refuses it, and which of the
original's checkpoints the new run reuses.

The new run restores every checkpointed step of the original but `from_step` and the
steps after it, which run again; it never reuses checkpoints another version of the
pipeline made (their outputs would mix with this version's).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from service.errors import Conflict, ValidationFailed, VersionChanged
from service.runs.model import Run
from service.sdk.pipeline import Pipeline, downstream_of
from service.status import is_terminal


def check_from_step(pipeline: Pipeline, from_step: str | None) -> None:
    """422 for a step the pipeline does not have, named as the caller wrote it."""
    if from_step is not None and from_step not in pipeline.steps_by_name:
        raise ValidationFailed(
            f"from_step: the pipeline has no step '{from_step}'; its steps are "
            f"{', '.join(pipeline.steps_by_name)}",
            errors=[{"loc": ["query", "from_step"], "msg": "no such step",
                     "type": "unknown_step", "input": from_step}],
        )  # fmt: skip


def check_ended(original: Run) -> None:
    """409 for a run that has not ended: its checkpoints are still being made."""
    if not is_terminal(original.status):
        raise Conflict(
            f"run '{original.run_id}' is {original.status}: only a run that has ended is retried",
            status=original.status,
        )


def reused_steps(
    pipeline: Pipeline,
    run_id: str,
    from_step: str | None,
    found: Mapping[str, Mapping[str, Any]],
) -> list[str]:
    """The steps whose checkpoints (`found`: the original's, by step) the retry restores."""
    redo = downstream_of(pipeline, from_step) if from_step is not None else set()
    reused = sorted(set(found) - redo)
    others = sorted({found[s]["pipeline_version"] for s in reused} - {pipeline.version})
    if others:
        raise VersionChanged(
            f"run '{run_id}' was checkpointed by pipeline version {', '.join(others)}; "
            f"this server runs version {pipeline.version}: retry it with from_step set "
            "to the first changed step, or submit it anew",
            versions={"checkpoints": others, "server": pipeline.version},
        )
    return reused
