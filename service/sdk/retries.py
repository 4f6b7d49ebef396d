"""A step's retry policy: which errors it retries in place, how often, after what delay.

Delays grow exponentially (`retry_delay * backoff ** (retry - 1)`, at most `max_delay`)
and are jittered down by up to `jitter` of themselves, so that the runs a shared outage
failed at once do not all come back at once.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TypedDict

from service.errors import PipelineDefinitionError

# Errors of the network and of time: what a retry can cure. A ValueError will not go away.
TRANSIENT: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError)


class RetryOptions(TypedDict, total=False):
    """What `@step(...)` takes of a retry policy: `StepRetries`' fields, defaults there."""

    retries: int
    retry_delay: float
    backoff: float
    max_delay: float
    retry_on: tuple[type[BaseException], ...]
    jitter: float


@dataclass(frozen=True, slots=True)
class StepRetries:
    retries: int = 0
    retry_delay: float = 1.0
    backoff: float = 2.0
    max_delay: float = 60.0
    retry_on: tuple[type[BaseException], ...] = TRANSIENT
    jitter: float = 0.1

    def check(self, step_name: str) -> None:
        """Refuse, when the pipeline is defined, a policy no run could follow."""
        wrong = [
            f"{name}={value!r}"
            for name, value, ok in (
                ("retries", self.retries, self.retries >= 0),
                ("retry_delay", self.retry_delay, self.retry_delay >= 0),
                ("backoff", self.backoff, self.backoff >= 1),
                ("max_delay", self.max_delay, self.max_delay >= 0),
                ("jitter", self.jitter, 0 <= self.jitter <= 1),
            )
            if not ok
        ]
        retry_on: object = self.retry_on
        if not isinstance(retry_on, tuple) or not all(
            isinstance(t, type) and issubclass(t, BaseException) for t in retry_on
        ):
            wrong.append(f"retry_on={self.retry_on!r} (exception classes expected)")
        if wrong:
            raise PipelineDefinitionError(f"step '{step_name}': invalid {', '.join(wrong)}")

    def retries_on(self, exc: BaseException, tries: int) -> bool:
        """Whether a step that raised `exc` on its try number `tries` (1, 2, ...) runs again."""
        return tries <= self.retries and isinstance(exc, self.retry_on)

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        """The wait before retry number `retry` (1 for the first)."""
        try:
            full = min(self.max_delay, self.retry_delay * self.backoff ** (retry - 1))
        except OverflowError:  # thousands of retries: long past max_delay
            full = self.max_delay
        return full * (1.0 - self.jitter * (rng or random).random())
