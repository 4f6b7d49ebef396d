"""A deployment's log file (the server's stdout and stderr): its tail, and following it."""

from __future__ import annotations

import codecs
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO


def tail_offset(f: BinaryIO, end: int, lines: int, start: int = 0) -> int:
    """Where the last `lines` lines before byte `end` begin (not before `start`)."""
    if lines <= 0:
        return end
    position, newlines = end, 0
    f.seek(max(start, end - 1))
    # A last line without its newline counts as a line too.
    wanted = lines + 1 if f.read(1) == b"\n" else lines
    while position > start:
        step = min(65536, position - start)
        position -= step
        f.seek(position)
        block = f.read(step)
        newlines += block.count(b"\n")
        if newlines >= wanted:
            cut = position
            for _ in range(newlines - wanted + 1):
                cut = position + block.index(b"\n", cut - position) + 1
            return cut
    return start


def log_tail(path: Path, lines: int, start: int = 0) -> list[str]:
    """The last `lines` lines of the file at `path`, from byte `start` on."""
    try:
        with path.open("rb") as f:
            end = f.seek(0, os.SEEK_END)
            f.seek(tail_offset(f, end, lines, start))
            data = f.read(end - f.tell())
    except FileNotFoundError:
        return []
    return data.decode(errors="replace").splitlines()


def read_log(log: BinaryIO, tail: int | None = None) -> Iterator[str]:
    """The log as it is now (its last `tail` lines), as text in pieces; `log` ends at its end."""
    end = log.seek(0, os.SEEK_END)
    log.seek(0 if tail is None else tail_offset(log, end, tail))
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    while log.tell() < end:
        chunk = log.read(min(65536, end - log.tell()))
        yield decoder.decode(chunk, final=log.tell() >= end)


def follow_log(log: BinaryIO, running: Callable[[], bool]) -> Iterator[str]:
    """The lines appended to the log from where it is, until `running()` turns false."""
    partial = b""
    checked = time.monotonic()
    while True:
        chunk = log.read()
        if chunk:
            partial += chunk
            *lines, partial = partial.split(b"\n")
            yield from (line.decode(errors="replace") for line in lines)
            continue
        # The record is read once a second, not on every poll of the file.
        if time.monotonic() - checked > 1:
            checked = time.monotonic()
            if not running():
                break
        time.sleep(0.2)
    if partial:
        yield partial.decode(errors="replace")
