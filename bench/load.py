"""Load from wrk: one run at a fixed number of connections, read from its Lua `done` hook."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve().parent / "wrk" / "post.lua"


class LoadError(Exception):
    """wrk is missing or failed; the message says which."""


def wrk_path() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise LoadError("wrk is not installed: apt-get install -y wrk")
    return path


def wrk_version() -> str:
    # `wrk -v` prints its version and exits 1.
    done = subprocess.run([wrk_path(), "-v"], capture_output=True, text=True, check=False)
    return (done.stdout or done.stderr).splitlines()[0].partition(" Copyright")[0].strip()


@dataclass(frozen=True)
class LoadResult:
    """One wrk run. Latencies are wrk's (request written to response read), in ms."""

    connections: int
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: int  # socket errors and timeouts
    bad_status: int  # responses with status >= 400
    cpu_us: float = 0.0  # the server's CPU time per request, if measured

    def with_cpu(self, cpu_seconds: float) -> LoadResult:
        cpu_us = round(cpu_seconds / self.requests * 1e6, 1) if self.requests else 0.0
        return dataclasses.replace(self, cpu_us=cpu_us)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def run_wrk(
    url: str, connections: int, seconds: int, body: str, key: str | None = None
) -> LoadResult:
    """POST `body` to `url` from `connections` connections for `seconds`; one wrk thread.

    One thread is enough to saturate one server process, and leaves the other core
    to the server on a 2-core machine.
    """
    env = {**os.environ, "BENCH_BODY": body, "BENCH_KEY": key or ""}
    command = [
        wrk_path(), "-t1", f"-c{connections}", f"-d{seconds}s",
        "--latency", "-s", str(SCRIPT), url,
    ]  # fmt: skip
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH_RESULT ")), None)
    if done.returncode != 0 or line is None:
        raise LoadError(f"wrk failed ({done.returncode}): {done.stdout}\n{done.stderr}")
    raw = json.loads(line.removeprefix("BENCH_RESULT "))
    seconds_run = raw["duration_us"] / 1e6
    return LoadResult(
        connections=connections,
        requests=raw["requests"],
        seconds=round(seconds_run, 3),
        rps=round(raw["requests"] / seconds_run, 1),
        p50_ms=raw["p50_us"] / 1000,
        p90_ms=raw["p90_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        max_ms=raw["max_us"] / 1000,
        errors=raw["connect_errors"] + raw["read_errors"] + raw["write_errors"] + raw["timeouts"],
        bad_status=raw["bad_status"],
    )
