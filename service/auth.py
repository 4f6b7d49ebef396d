"""Auth: keys made from `secrets`, stored only as hashes, compared in constant time; and
where the hashes live.

A key is 256 random bits; a fast hash suffices for such keys (there is nothing to guess
by brute force), so checking one costs microseconds. Hashes are written
`sha256:<64 hex digits>`.

Where auth key hashes live: a JSON file (`pipeserve keys ...`) and a setting (a Secret).

Auth is on once enabled: while the keys file exists (even with no key left in it: revoking
the last key must not open the server), while the setting holds a key, or always with
`auth="required"`; only `auth="off"` (or deleting the file) turns it off. A keys file that
cannot be read keeps auth on with no valid key from it: it fails closed.
The server re-reads the file when it changes (mtime, inode or size), looked at no more than
once a second, so `pipeserve keys revoke` takes effect
in a running server without a restart and requests never pay for a `stat`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from service.errors import PipeserveError
from service.files import NAME, write_private

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


logger = logging.getLogger("pipeserve.auth")

AuthMode = Literal["auto", "required", "off"]


class KeyStoreError(PipeserveError):
    """A key command cannot be done; the message is one line for the user."""


@dataclass(frozen=True, slots=True)
class KeyRecord:
    name: str
    hash: str
    created_at: str
    source: str = "file"


def parse_hash_setting(value: str) -> list[KeyRecord]:
    """`name:sha256:<hex>,...` from PIPESERVE_AUTH_KEY_HASHES; a bare hash gets a numbered name."""
    records = []
    for i, entry in enumerate(e.strip() for e in value.split(",")):
        if not entry:
            continue
        name, sep, digest = entry.partition(":")
        if sep and is_key_hash(digest):
            records.append(KeyRecord(name, digest, "", "setting"))
        elif is_key_hash(entry):
            records.append(KeyRecord(f"setting-{i + 1}", entry, "", "setting"))
        else:
            raise ValueError(f"entry {i + 1} is not name:sha256:<64 hex digits>")
    return records


def hash_setting(entries: Iterable[tuple[str, str]], given: str = "") -> str:
    """The PIPESERVE_AUTH_KEY_HASHES value that parse_hash_setting reads back: `given` (a
    value of the setting), then `name:sha256:<hex>` for each (name, hash) of `entries`."""
    return ",".join(filter(None, [given, *(f"{name}:{digest}" for name, digest in entries)]))


class KeyFile:
    """The keys file: only hashes, names and creation times; written atomically, mode 0600."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> list[KeyRecord]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise KeyStoreError(f"cannot read the keys file {self.path}: {exc}") from exc
        try:
            records = [
                KeyRecord(**{k: v for k, v in item.items() if k != "source"})
                for item in data["keys"]
            ]
        except (KeyError, TypeError, AttributeError) as exc:
            raise KeyStoreError(
                f"cannot read the keys file {self.path}: not a list of keys ({exc!r})"
            ) from exc
        for record in records:
            if not isinstance(record.hash, str) or not is_key_hash(record.hash):
                raise KeyStoreError(
                    f"cannot read the keys file {self.path}: key {record.name!r} has no "
                    "valid sha256:<hex> hash"
                )
        return records

    def _save(self, records: list[KeyRecord]) -> None:
        document = {
            "keys": [{k: v for k, v in asdict(r).items() if k != "source"} for r in records]
        }
        write_private(self.path, json.dumps(document, indent=2))

    def create(self, name: str | None = None) -> tuple[str, KeyRecord]:
        records = self.load()
        taken = {r.name for r in records}
        if name is None:
            n = len(records) + 1
            while f"key-{n}" in taken:
                n += 1
            name = f"key-{n}"
        if not NAME.match(name):
            raise KeyStoreError(
                f"'{name}' is not a key name: use letters, digits, '.', '_' and '-'"
            )
        if name in taken:
            raise KeyStoreError(
                f"a key named '{name}' exists: revoke it first, or pick another name"
            )
        key = generate_key()
        record = KeyRecord(name, hash_key(key), datetime.now(UTC).isoformat())
        self._save([*records, record])
        return key, record

    def revoke(self, name: str) -> None:
        records = self.load()
        kept = [r for r in records if r.name != name]
        if len(kept) == len(records):
            raise KeyStoreError(f"no key named '{name}' in {self.path}")
        self._save(kept)


class KeyRing:
    """The valid hashes for one server process."""

    def __init__(
        self, file: KeyFile, setting_records: list[KeyRecord], mode: AuthMode = "auto"
    ) -> None:
        self.file = file
        self.mode = mode
        self._setting = [r.hash for r in setting_records]
        self._hashes: tuple[str, ...] = tuple(self._setting)
        # Why the file cannot be read (None: it can, or it is absent); logged once a change.
        self._file_error: str | None = None
        # The file's (mtime, inode, size) at the last look; None: absent; -1s: cannot stat.
        self._signature: tuple[int, int, int] | None = None
        self._checked = 0.0
        self.refresh(force=True)
        self._log_state()

    def _log_state(self) -> None:
        """One line at start: whether auth is on and from where (never a key)."""
        where = {"auth": self.source, "keys_file": str(self.file.path)}
        if self.enabled:
            logger.info("auth is on", extra=where)
        elif self.mode == "off" and (self._file_exists or self._setting):
            logger.warning("auth is off (auth=off) although keys are configured", extra=where)
        else:
            logger.info("auth is off: no keys file and no key hash set", extra=where)

    @property
    def _file_exists(self) -> bool:
        """Whether the keys file was there at the last look (readable or not)."""
        return self._signature is not None

    @property
    def refusal(self) -> str | None:
        """Why no key can get in, for the 401 body; None while some key is valid."""
        if self._file_error is not None:
            return (
                "the server cannot read its auth keys file, so it accepts no key from it "
                "until the file is fixed (see the server's log)"
            )
        if not self._hashes:
            return (
                "auth is on but no auth key is configured on this server: "
                "make one with `pipeserve keys create`"
            )
        return None

    @property
    def enabled(self) -> bool:
        if self.mode == "off":
            return False
        return self.mode == "required" or self._file_exists or bool(self._setting)

    @property
    def source(self) -> str:
        """Where auth comes from, for the start-up log (never a key)."""
        if not self.enabled:
            return "off"
        parts = [name for name, on in (("file", self._file_exists),
                                       ("setting", bool(self._setting))) if on]  # fmt: skip
        return "+".join(parts) or "required"

    def refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._checked < 1.0:
            return
        self._checked = now
        stat_error: OSError | None = None
        signature: tuple[int, int, int] | None
        try:
            info = self.file.path.stat()
            signature = (info.st_mtime_ns, info.st_ino, info.st_size)
        except FileNotFoundError:
            signature = None
        except OSError as exc:  # e.g. a directory we may not enter: maybe there, unreadable
            signature, stat_error = (-1, -1, -1), exc
        if not force and signature == self._signature:
            return
        self._signature = signature
        file_hashes: list[str] = []
        error: str | None = None
        if stat_error is not None:
            error = f"cannot read the keys file {self.file.path}: {stat_error}"
        elif signature is not None:
            try:
                file_hashes = [r.hash for r in self.file.load()]
            except KeyStoreError as exc:
                error = str(exc)
        # Fail closed: a file that cannot be read still means auth is on, with none of its keys.
        if error is not None and error != self._file_error:
            logger.error(
                "cannot read the keys file; accepting none of its keys until it is fixed",
                extra={"path": str(self.file.path), "error": error},
            )
        elif error is None and self._file_error is not None:
            logger.info("the keys file is readable again", extra={"path": str(self.file.path)})
        self._file_error = error
        self._hashes = tuple(self._setting + file_hashes)

    def accepts(self, key: str) -> bool:
        return matches(key, self._hashes)
