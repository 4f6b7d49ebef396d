"""Webhooks: a finished run's record, POSTed to the run's `webhook_url`, signed, retried.

The signature is HMAC-SHA256, under the `webhook_secret` setting, of the timestamp, a dot
and the body, sent as `X-Pipeserve-Signature: sha256=<hex>` beside
`X-Pipeserve-Timestamp: <unix seconds>`. Signing the timestamp lets a receiver refuse a
replayed delivery; `verify` below is the receiver's side.

Delivery is an outbox in the run store: a run that ends with a webhook is marked `pending`,
and whichever replica claims it next delivers it, so a delivery survives a crash. A failed
attempt is retried with exponential backoff up to `webhook_max_attempts`; every attempt is
recorded on the run. A webhook never changes the run's own status.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Any

import httpx

from service import __version__
from service.runs.records import iso

SIGNATURE_HEADER = "X-Pipeserve-Signature"
TIMESTAMP_HEADER = "X-Pipeserve-Timestamp"
EVENT_HEADER = "X-Pipeserve-Event"
DELIVERY_HEADER = "X-Pipeserve-Delivery"

_FIRST_RETRY = 1.0
_LONGEST_WAIT = 300.0


def signature(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


def verify(
    secret: str, body: bytes, timestamp: str, signature_header: str, tolerance: float = 300
) -> bool:
    """For a receiver: True if the delivery is ours, untouched and fresh (within `tolerance`
    seconds)."""
    try:
        age = abs(time.time() - int(timestamp))
    except ValueError:
        return False
    expected = signature(secret, timestamp, body)
    return age <= tolerance and hmac.compare_digest(expected, signature_header)


def backoff(attempts: int) -> float:
    """Seconds before the next attempt, after `attempts` failed ones: 1, 2, 4, ... 300."""
    return float(min(_FIRST_RETRY * 2 ** (attempts - 1), _LONGEST_WAIT))


@dataclass(frozen=True, slots=True)
class Outcome:
    """One delivery attempt, as recorded on the run."""

    attempt: int
    at: float
    duration: float
    status_code: int | None
    error: str | None

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    def as_record(self) -> dict[str, Any]:
        return {
            "attempt": self.attempt,
            "at": iso(self.at),
            "duration": round(self.duration, 6),
            "status_code": self.status_code,
            "error": self.error,
        }


class WebhookSender:
    def __init__(self, secret: str, timeout: float) -> None:
        self.secret = secret
        self.client = httpx.AsyncClient(
            timeout=timeout,
            follow_redirects=False,
            headers={"User-Agent": f"pipeserve/{__version__}"},
        )

    async def send(self, url: str, body: bytes, event: str, delivery: str, attempt: int) -> Outcome:
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            EVENT_HEADER: event,
            DELIVERY_HEADER: delivery,
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: signature(self.secret, timestamp, body),
        }
        started = time.time()
        t0 = time.perf_counter()
        try:
            response = await self.client.post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return Outcome(attempt, started, time.perf_counter() - t0, None, _describe(exc))
        error = None if response.is_success else f"HTTP {response.status_code}"
        return Outcome(attempt, started, time.perf_counter() - t0, response.status_code, error)

    async def close(self) -> None:
        await self.client.aclose()


def _describe(exc: httpx.HTTPError) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]
