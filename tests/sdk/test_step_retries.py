"""Step retries: an error the policy names is retried in place, with backoff and jitter,
within the run's deadline; any other error fails the step at once."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest

from service import run_pipeline, step
from service.errors import PipelineDefinitionError
from service.sdk.retries import StepRetries
from tests.durable_pipelines import not_retried, retried


def tries_at(log: Path) -> list[float]:
    return [float(line.split()[1]) for line in log.read_text().splitlines()]


def test_a_step_failing_twice_with_connection_error_succeeds_on_its_third_try(
    tmp_path: Path,
) -> None:
    log = tmp_path / "tries.log"
    inv = run_pipeline(retried, {"log": str(log), "failures": 2})
    assert inv.status == "succeeded" and inv.outputs == {"flaky": "ok"}
    record = inv.records["flaky"]
    assert (record.status, record.tries) == ("completed", 3)
    # retry_delay 0.3, backoff 2: waits of 0.3 then 0.6 s, jittered down by up to 10%.
    at = tries_at(log)
    gaps = [b - a for a, b in itertools.pairwise(at)]
    assert len(gaps) == 2
    assert 0.27 <= gaps[0] <= 0.3 + 0.25, gaps
    assert 0.54 <= gaps[1] <= 0.6 + 0.25, gaps
    assert record.duration is not None and record.duration >= sum(gaps)


def test_retries_run_out(tmp_path: Path) -> None:
    log = tmp_path / "tries.log"
    inv = run_pipeline(retried, {"log": str(log), "failures": 10})
    assert inv.status == "failed" and inv.error is not None
    assert inv.error.type == "ConnectionError"
    assert inv.records["flaky"].tries == 4  # the first try and its 3 retries


def test_an_error_the_policy_does_not_name_is_not_retried(tmp_path: Path) -> None:
    log = tmp_path / "tries.log"
    inv = run_pipeline(not_retried, {"log": str(log)})
    assert inv.status == "failed" and inv.error is not None and inv.error.type == "ValueError"
    assert inv.records["wrong"].tries == 1
    assert len(log.read_text().splitlines()) == 1


def test_delays_grow_to_their_cap_and_jitter_only_shortens_them() -> None:
    policy = StepRetries(retries=10, retry_delay=1.0, backoff=3.0, max_delay=20.0, jitter=0.2)
    rng = random.Random(7)
    for retry, full in ((1, 1.0), (2, 3.0), (3, 9.0), (4, 20.0), (9, 20.0)):
        delay = policy.delay(retry, rng)
        assert full * 0.8 <= delay <= full
    assert StepRetries(jitter=0.0).delay(1) == 1.0
    assert policy.retries_on(ConnectionError(), 10)
    assert not policy.retries_on(ConnectionError(), 11)
    assert not policy.retries_on(ValueError(), 1)
    # Subclasses count: a refused connection is a ConnectionError.
    assert policy.retries_on(ConnectionRefusedError(), 1)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"retries": -1}, "retries=-1"),
        ({"backoff": 0.5}, "backoff=0.5"),
        ({"jitter": 2.0}, "jitter=2.0"),
        ({"retry_delay": -1.0}, "retry_delay=-1.0"),
        ({"retry_on": (ValueError, "oops")}, "retry_on="),
        ({"retry_on": ConnectionError}, "retry_on="),  # a class, not a tuple of them
    ],
)
def test_a_policy_no_run_could_follow_is_refused_at_definition(
    options: dict[str, object], named: str
) -> None:
    with pytest.raises(PipelineDefinitionError, match=named):

        def broken() -> int:
            return 1

        step(**options)(broken)  # type: ignore[call-overload]
