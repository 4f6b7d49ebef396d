"""The cursors of run listings: opaque to clients, where the next page starts."""

from __future__ import annotations

import base64
import math
import re

from service.errors import ValidationFailed

# What encode_cursor makes: unpadded URL-safe base64 of `<created_at>:<seq>`.
CURSOR_PATTERN = "^[A-Za-z0-9_-]{1,128}$"
_CURSOR = re.compile(CURSOR_PATTERN)
_SEQ_MAX = 2**63 - 1  # the store's BIGINT


def encode_cursor(created_at: float, seq: int) -> str:
    return base64.urlsafe_b64encode(f"{created_at!r}:{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, int]:
    """A cursor's place; 422 `cursor` for one this server did not give out: the values
    bound to SQL are a finite float and a sequence number from 0 to 2**63-1."""
    try:
        if not _CURSOR.fullmatch(cursor):
            raise ValueError(cursor)
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created_text, seq_text = text.split(":")
        created, seq = float(created_text), int(seq_text)
        if not math.isfinite(created) or not 0 <= seq <= _SEQ_MAX:
            raise ValueError(text)
        return created, seq
    except ValueError:
        raise ValidationFailed(
            "cursor: not a cursor this server gave out",
            errors=[{"loc": ["query", "cursor"], "msg": "invalid cursor", "type": "cursor"}],
        ) from None
