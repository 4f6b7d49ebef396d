"""Checkpoints in an object store (`checkpoint_url`): any filesystem fsspec knows, from a
local directory to S3 or GCS (with its fsspec package installed, s3fs or gcsfs).

Large values go there instead of the run store's database; the database keeps their
location. Blocking calls: made from worker threads, never on the event loop.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

logger = logging.getLogger("pipeserve.runs")


class ObjectStore:
    def __init__(self, url: str) -> None:
        from fsspec.core import url_to_fs

        self._fs: Any
        self._fs, self._root = url_to_fs(url.rstrip("/"))
        self._root = self._root.rstrip("/")

    def put(self, key: str, data: bytes) -> str:
        """Store `data` under `key` (a run id and step: unique); returns its location."""
        path = f"{self._root}/{key}"
        self._fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        with self._fs.open(path, "wb") as file:
            file.write(data)
        return path

    def _inside(self, location: str) -> str:
        """A location read from the database, if it is one of ours: a database that is not
        trusted like code (`checkpoint_pickle` off) must not point us at other files."""
        if not location.startswith(self._root + "/") or "/../" in location:
            raise ValueError(f"checkpoint location {location!r} is not under {self._root!r}")
        return location

    def get(self, location: str) -> bytes:
        with self._fs.open(self._inside(location), "rb") as file:
            data: bytes = file.read()
        return data

    def delete(self, locations: Sequence[str]) -> None:
        """Delete objects no checkpoint names any more; one that is gone already is fine."""
        for location in locations:
            try:
                self._fs.rm(self._inside(location))
            except FileNotFoundError:
                pass
            except Exception:
                logger.exception(
                    "could not delete a checkpoint object", extra={"location": location}
                )
