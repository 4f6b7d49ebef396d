"""The vocabulary of runs: the kinds of run, the statuses of a run, of its steps and of
its webhook, and the kinds of event in a run's stream, each written once.

The runner sets them, the run store keeps them, the API's schema and OpenAPI document
state them and the Python client waits on them, all from here. Each vocabulary is a
`Literal` (what mypy checks); the tuple of its values in their documented order is here
for those that code iterates, SQL filters by or the OpenAPI enums list.

Standard library only: the Python client imports it without the server's dependencies.
"""

from __future__ import annotations

from typing import Final, Literal, TypeGuard, get_args

# -- runs --------------------------------------------------------------------------------

# `invoke`: answered at once by `/invoke`, recorded afterwards. `batch`: queued by `/runs`.
RunKind = Literal["invoke", "batch"]

# A run waits in the queue (again when requeued after its process died), runs, then ends
# in one of the terminal statuses, which it never leaves.
Queued = Literal["queued"]
ActiveStatus = Literal[Queued, "running"]
TerminalStatus = Literal["succeeded", "failed", "cancelled", "timed_out"]
RunStatus = Literal[ActiveStatus, TerminalStatus]

ACTIVE: Final[tuple[ActiveStatus, ...]] = get_args(ActiveStatus)
TERMINAL: Final[tuple[TerminalStatus, ...]] = get_args(TerminalStatus)
RUN_STATUSES: Final[tuple[RunStatus, ...]] = get_args(RunStatus)


def is_terminal(status: str) -> TypeGuard[TerminalStatus]:
    """True for a status a run ends in (and then never leaves)."""
    return status in TERMINAL


# -- steps -------------------------------------------------------------------------------

# Every step of a run's plan starts `pending`; one that never starts (an upstream step
# failed, or the run was cancelled) stays `pending`. `cancelled`: an async step that its
# run's cancel or deadline interrupted. `restored`: a resumed run loaded the step's
# outputs from the checkpoint an earlier attempt wrote, instead of running it again.
StepStatus = Literal["pending", "running", "completed", "failed", "cancelled", "restored"]

# -- the event stream --------------------------------------------------------------------

# `step_retrying`: the step raised an error its retry policy retries, and will run again.
StepEventKind = Literal["step_started", "step_retrying", "step_finished", "step_failed"]

# A run's stream: `queued` (again when requeued), its steps' progress, then its end.
EventKind = Literal[Queued, StepEventKind, TerminalStatus]
EVENT_KINDS: Final[tuple[EventKind, ...]] = get_args(EventKind)

# -- webhooks ----------------------------------------------------------------------------

# `pending` until delivered, or `failed` once `webhook_max_attempts` attempts failed.
WebhookStatus = Literal["pending", "delivered", "failed"]
