"""Schemathesis hooks (`SCHEMATHESIS_HOOKS=tests.schemathesis_hooks`) for what a schema
cannot say: tokens only the server makes, and keys a client must not reuse."""

from __future__ import annotations

import itertools
import os
from typing import Any

import schemathesis
from hypothesis import strategies as st

from service.runs.manager import encode_cursor
from service.server.runs_routes import MAX_KEY_LENGTH

# A `next_cursor`: opaque to clients, and refused (422) unless the server made it.
schemathesis.openapi.format(
    "pipeserve-cursor",
    st.builds(
        encode_cursor,
        st.floats(allow_nan=False, allow_infinity=False),
        st.integers(min_value=0, max_value=2**63 - 1),
    ),
)

_requests = itertools.count()
_run = os.urandom(4).hex()


@schemathesis.hook
def before_call(ctx: Any, case: Any, **kwargs: Any) -> None:
    """An Idempotency-Key names one request: sent again with another body it is refused
    (422), as it should be. A fuzzer reuses short keys by chance, so each valid one gets a
    suffix of its own, within the length limit; an invalid one is sent as it is."""
    headers = case.headers or {}
    key = headers.get("Idempotency-Key")
    if isinstance(key, str) and 0 < len(key) <= MAX_KEY_LENGTH:
        headers["Idempotency-Key"] = f"{key}-{_run}-{next(_requests)}"[-MAX_KEY_LENGTH:]
