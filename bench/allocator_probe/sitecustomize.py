"""Where a bench server's memory sits, sampled from inside it: `python -m bench.soak --probe`.

Python imports this module at start-up when this directory is on PYTHONPATH, and it
does nothing unless `BENCH_PROBE_OUT` names a file. Then a daemon thread appends a JSON
line to that file every `BENCH_PROBE_INTERVAL` seconds (20) with:

- `rss_kib`, and `main_heap_kib`: the main malloc arena (`[heap]` in smaps);
- `arenas_kib`: the RSS of each other malloc arena, by the threads that use it (named
  after their prefix, `pipeserve-store`, `pipeserve-step`...). A thread's arena is found
  from the address of a block it allocates when it starts: glibc's thread arenas are
  heaps of 64 MiB aligned to 64 MiB;
- `other_anon_kib`: the rest of the anonymous memory (pymalloc's arenas, large blocks
  mapped on their own, thread stacks);
- `glibc`: `mallinfo2()` bytes in use, free in the arenas, and mapped on their own;
- `sqlite_kib`: `sqlite3_memory_used()` and its high-water mark, over all connections;
- `python_blocks`: `sys.getallocatedblocks()`.

Linux and glibc only; a sample that cannot be taken is written as its error. It is a
bench tool: it wraps `threading.Thread._bootstrap_inner`, which no library should do.
"""

from __future__ import annotations

import os

_OUT = os.environ.get("BENCH_PROBE_OUT")

if _OUT:
    import ctypes
    import json
    import sys
    import threading
    import time
    from typing import Any

    _HEAP = 64 << 20  # glibc's HEAP_MAX_SIZE on 64-bit
    _libc = ctypes.CDLL(None)
    _libc.malloc.restype = ctypes.c_void_p
    _libc.malloc.argtypes = [ctypes.c_size_t]
    _libc.free.argtypes = [ctypes.c_void_p]

    class _MallInfo2(ctypes.Structure):
        _fields_ = [
            (name, ctypes.c_size_t)
            for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                         "fsmblks", "uordblks", "fordblks", "keepcost")
        ]  # fmt: skip

    _libc.mallinfo2.restype = _MallInfo2
    _heaps: dict[str, int] = {}  # thread name -> its arena's heap address

    def _note_arena(name: str) -> None:
        block = _libc.malloc(200)
        _heaps[name] = block & ~(_HEAP - 1)
        _libc.free(block)

    _bootstrap = threading.Thread._bootstrap_inner  # type: ignore[attr-defined]

    def _bootstrap_noting_arena(self: threading.Thread) -> None:
        _note_arena(self.name)
        _bootstrap(self)

    threading.Thread._bootstrap_inner = _bootstrap_noting_arena  # type: ignore[attr-defined]

    def _mappings() -> list[tuple[int, str, int]]:
        """(start, name, RSS KiB) of each mapping in /proc/self/smaps."""
        found: list[tuple[int, str, int]] = []
        start, name = 0, ""
        with open("/proc/self/smaps") as smaps:
            for line in smaps:
                head = line.split(None, 1)[0]
                if head == "Rss:":
                    found.append((start, name, int(line.split()[1])))
                elif "-" in head and not head.endswith(":"):
                    fields = line.split()
                    start = int(head.split("-")[0], 16)
                    name = fields[5] if len(fields) > 5 else ""
        return found

    def _sqlite() -> list[int] | None:
        try:
            lib = ctypes.CDLL("libsqlite3.so.0")
        except OSError:
            return None
        lib.sqlite3_memory_used.restype = ctypes.c_int64
        lib.sqlite3_memory_highwater.restype = ctypes.c_int64
        return [lib.sqlite3_memory_used() >> 10, lib.sqlite3_memory_highwater(0) >> 10]

    def _sample(t0: float) -> dict[str, Any]:
        mappings = _mappings()
        anonymous = [(start, rss) for start, name, rss in mappings if name == ""]
        arenas: dict[str, int] = {}
        counted: set[int] = set()
        for thread, heap in sorted(_heaps.items()):
            if heap in counted:
                continue
            rss = sum(kib for start, kib in anonymous if heap <= start < heap + _HEAP)
            if rss:
                counted.add(heap)
                group = thread.rstrip("0123456789_") or thread
                arenas[group] = arenas.get(group, 0) + rss
        info = _libc.mallinfo2()
        return {
            "t": round(time.monotonic() - t0, 1),
            "rss_kib": sum(rss for _, _, rss in mappings),
            "main_heap_kib": sum(rss for _, name, rss in mappings if name == "[heap]"),
            "arenas_kib": arenas,
            "other_anon_kib": sum(rss for _, rss in anonymous) - sum(arenas.values()),
            "glibc": {
                "in_use_kib": info.uordblks >> 10,
                "free_kib": info.fordblks >> 10,
                "mapped_kib": info.hblkhd >> 10,
            },
            "sqlite_kib": _sqlite(),
            "python_blocks": sys.getallocatedblocks(),
        }

    def _sample_forever(path: str, interval: float) -> None:
        t0 = time.monotonic()
        while True:
            time.sleep(interval)
            try:
                line: dict[str, Any] = _sample(t0)
            except Exception as exc:  # a bench probe must never stop the server
                line = {"t": round(time.monotonic() - t0, 1), "error": repr(exc)}
            with open(path, "a") as out:
                out.write(json.dumps(line) + "\n")

    _note_arena("MainThread")
    threading.Thread(
        target=_sample_forever,
        args=(_OUT, float(os.environ.get("BENCH_PROBE_INTERVAL", "20"))),
        name="bench-probe",
        daemon=True,
    ).start()
