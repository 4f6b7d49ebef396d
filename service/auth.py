"""Auth keys: made from `secrets`, stored only as hashes, compared in constant time.

A key is 256 random bits; a fast hash suffices for such keys (there is nothing to guess
by brute force), so checking one costs microseconds. Hashes are written
`sha256:<64 hex digits>`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable

KEY_PREFIX = "psk_"
HASH_PREFIX = "sha256:"


def generate_key() -> str:
    """A new key: `psk_` and 43 url-safe characters (256 bits from `secrets`)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return HASH_PREFIX + hashlib.sha256(key.encode()).hexdigest()


def is_key_hash(value: str) -> bool:
    digest = value.removeprefix(HASH_PREFIX)
    return (
        value.startswith(HASH_PREFIX)
        and len(digest) == 64
        and all(c in "0123456789abcdef" for c in digest)
    )


def matches(key: str, hashes: Iterable[str]) -> bool:
    """True if `key` hashes to one of `hashes`; every comparison is constant-time."""
    candidate = hash_key(key).encode()
    found = False
    for stored in hashes:
        # No early exit: the time taken does not tell which key (or whether one) matched.
        found |= hmac.compare_digest(candidate, stored.encode())
    return found
