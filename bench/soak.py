"""The soak: is pipeserve's memory flat under long recording-on load? `python -m bench.soak`.

pipeserve (echo-def, every /invoke recorded in a SQLite run store) and the floor run side
by side for `--minutes`. wrk drives them in alternating chunks of `--chunk` seconds, and
while pipeserve is driven a second client submits batch runs, reads them back and pages
through `GET /runs`, so that the store's write and read paths both turn over. Each
server's RSS is sampled after each of its chunks.

After a warm-up (the first third: allocator arenas, caches and the run store's pages
fill), memory is judged on the rest: its creep (the median RSS of the last third less
that of the middle third: single samples swing by a few MiB with the allocator) and the
least-squares slope, in MiB per 10 minutes, each against the floor's in the same run.
A leak of one small object a request shows as a steady slope: at ~1,000 requests a
second, 100 bytes a request is ~57 MiB per 10 minutes.

`--env NAME=VALUE` sets a variable for both servers (say `MALLOC_ARENA_MAX=2`).
`--probe` samples, inside both servers, where their memory sits (each thread's malloc
arena, glibc's free bytes, SQLite's memory: `bench/allocator_probe`); the samples go in
the JSON, and the first and last are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from .load import LoadError, LoadResult, run_wrk, wrk_path
from .machine import describe
from .servers import start_floor, start_pipeserve
from .workloads import ECHO_BODY, recording_on

RESULTS = Path(__file__).resolve().parent / "results"
PROBE = Path(__file__).resolve().parent / "allocator_probe"
# Flat: past the warm-up, pipeserve's RSS creeps by at most this much more than the floor's.
MAX_EXTRA_CREEP_MB = 2.0
MAX_EXTRA_SLOPE_MB_PER_10MIN = 1.0


def slope_per_10min(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MiB) samples, in MiB per 10 minutes."""
    if len(samples) < 2:
        return 0.0
    return (
        statistics.linear_regression([t for t, _ in samples], [m for _, m in samples]).slope * 600
    )


def judge(samples: list[tuple[float, float]]) -> dict[str, float]:
    """The samples' thirds by time: the first is the warm-up; creep and slope are of the
    other two."""
    start, end = samples[0][0], samples[-1][0]

    def third(n: int) -> list[float]:
        low, high = start + (end - start) * n / 3, start + (end - start) * (n + 1) / 3
        return [m for t, m in samples if low <= t < high or (n == 2 and t == end)]

    middle, last = third(1) or [samples[-1][1]], third(2) or [samples[-1][1]]
    steady = [s for s in samples if s[0] >= start + (end - start) / 3]
    return {
        "first_mb": round(samples[0][1], 1),
        "middle_median_mb": round(statistics.median(middle), 2),
        "last_median_mb": round(statistics.median(last), 2),
        "max_mb": round(max(m for _, m in steady or samples), 1),
        "creep_mb": round(statistics.median(last) - statistics.median(middle), 2),
        "slope_mb_per_10min": round(slope_per_10min(steady), 2),
    }


class StoreTraffic:
    """Batch runs submitted, read back and paged through while pipeserve is loaded."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=30)
        self.active = threading.Event()
        self.stopped = threading.Event()
        self.submitted = 0
        self.failures: list[str] = []
        self.thread = threading.Thread(target=self._drive, daemon=True)
        self.thread.start()

    def _drive(self) -> None:
        cursor: str | None = None
        while not self.stopped.is_set():
            if not self.active.wait(0.2):
                continue
            try:
                submitted = self.http.post("/runs", json={"parameters": {"x": self.submitted}})
                submitted.raise_for_status()
                self.submitted += 1
                self.http.get(f"/runs/{submitted.json()['run_id']}").raise_for_status()
                page = self.http.get(
                    "/runs", params={"limit": 50, **({"cursor": cursor} if cursor else {})}
                )
                page.raise_for_status()
                cursor = page.json().get("next_cursor")
            except httpx.HTTPError as exc:
                self.failures.append(repr(exc))
            time.sleep(0.05)

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(10)
        self.http.close()


def probed(env: dict[str, str], out: Path) -> dict[str, str]:
    """`env` with the allocator probe on, sampling into `out` (JSON lines)."""
    path = os.pathsep.join(filter(None, [str(PROBE), env.get("PYTHONPATH")]))
    return {**env, "PYTHONPATH": path, "BENCH_PROBE_OUT": str(out)}


def soak(
    minutes: float,
    chunk: int,
    connections: int,
    env: dict[str, str],
    workdir: Path,
    say: Any,
    probe: bool = False,
) -> dict[str, Any]:
    probes = {kind: workdir / f"probe-{kind}.jsonl" for kind in ("floor", "pipeserve")}

    def env_of(kind: str) -> dict[str, str]:
        return probed(env, probes[kind]) if probe else env

    floor = start_floor("echo-def", workdir / "floor.log", env_of("floor"))
    pipeserve = start_pipeserve(
        "bench.pipelines:echo_def",
        workdir / "pipeserve.log",
        {**env_of("pipeserve"), **recording_on(workdir)},
    )
    traffic = StoreTraffic(pipeserve.url)
    servers = (floor, pipeserve)
    samples: dict[str, list[tuple[float, float]]] = {s.kind: [] for s in servers}
    loads: dict[str, list[LoadResult]] = {s.kind: [] for s in servers}
    t0 = time.monotonic()
    try:
        for server in servers:
            samples[server.kind].append((0.0, server.rss_mb()))
        while time.monotonic() - t0 < minutes * 60:
            for server in servers:
                if server is pipeserve:
                    traffic.active.set()
                loads[server.kind].append(
                    run_wrk(server.url + "/invoke", connections, chunk, ECHO_BODY)
                )
                traffic.active.clear()
                samples[server.kind].append((time.monotonic() - t0, server.rss_mb()))
            elapsed = time.monotonic() - t0
            say(
                f"{elapsed / 60:5.1f} min  RSS floor {samples['floor'][-1][1]:.1f} MiB, "
                f"pipeserve {samples['pipeserve'][-1][1]:.1f} MiB, "
                f"{traffic.submitted} batch runs"
            )
        # The store still answers after the whole load.
        httpx.get(pipeserve.url + "/runs", params={"limit": 1}, timeout=30).raise_for_status()
    finally:
        traffic.close()
        for server in servers:
            server.stop()
    results = _results(minutes, chunk, connections, env, samples, loads, traffic)
    if probe:
        results["probe"] = {
            kind: [json.loads(line) for line in path.read_text().splitlines()]
            if path.exists()
            else []
            for kind, path in probes.items()
        }
    return results


def _results(
    minutes: float,
    chunk: int,
    connections: int,
    env: dict[str, str],
    samples: dict[str, list[tuple[float, float]]],
    loads: dict[str, list[LoadResult]],
    traffic: StoreTraffic,
) -> dict[str, Any]:
    memory = {kind: judge(series) for kind, series in samples.items()}
    extra_creep = memory["pipeserve"]["creep_mb"] - memory["floor"]["creep_mb"]
    extra_slope = memory["pipeserve"]["slope_mb_per_10min"] - memory["floor"]["slope_mb_per_10min"]
    invalid = [kind for kind, runs in loads.items() if any(r.errors or r.bad_status for r in runs)]
    return {
        "machine": describe(),
        "plan": {"minutes": minutes, "chunk_seconds": chunk, "connections": connections},
        "requests": {kind: sum(r.requests for r in runs) for kind, runs in loads.items()},
        "batch_runs": traffic.submitted,
        "store_failures": traffic.failures[:20],
        "invalid": invalid,
        "env": env,
        "samples": {
            kind: [[round(t, 1), round(m, 2)] for t, m in s] for kind, s in samples.items()
        },
        "memory": memory,
        "targets": [
            _target(
                "RSS creep, last third less middle third (medians), pipeserve less floor",
                "MiB",
                MAX_EXTRA_CREEP_MB,
                extra_creep,
            ),
            _target(
                "RSS slope of the last two thirds, pipeserve less floor",
                "MiB/10 min",
                MAX_EXTRA_SLOPE_MB_PER_10MIN,
                extra_slope,
            ),
        ],
    }


def _target(name: str, unit: str, limit: float, value: float) -> dict[str, Any]:
    return {
        "name": name, "unit": unit, "op": "<=", "target": limit,
        "value": round(value, 2), "met": value <= limit,
    }  # fmt: skip


def render(results: dict[str, Any]) -> str:
    plan, memory = results["plan"], results["memory"]
    lines = [
        f"soak: {plan['minutes']} min, wrk {plan['connections']} connections in "
        f"{plan['chunk_seconds']} s chunks; requests {results['requests']}, "
        f"{results['batch_runs']} batch runs, store failures {len(results['store_failures'])}",
        "",
        f"{'server':<10} {'first':>8} {'middle':>8} {'last':>8} {'max':>8} {'creep':>8} "
        f"{'MiB/10min':>10}",
    ]
    for kind, m in memory.items():
        lines.append(
            f"{kind:<10} {m['first_mb']:>8} {m['middle_median_mb']:>8} {m['last_median_mb']:>8} "
            f"{m['max_mb']:>8} {m['creep_mb']:>8} {m['slope_mb_per_10min']:>10}"
        )
    lines.append("")
    for target in results["targets"]:
        verdict = "met" if target["met"] else "NOT MET"
        lines.append(
            f"{target['name']}: {target['value']} {target['unit']} "
            f"({target['op']} {target['target']}): {verdict}"
        )
    if results["invalid"]:
        lines.append(f"invalid (socket errors or 4xx/5xx under load): {results['invalid']}")
    for kind, probe in results.get("probe", {}).items():
        lines += ["", f"probe of {kind} (KiB), first and last sample:"]
        lines += [f"  {_probe_line(sample)}" for sample in probe[:1] + probe[-1:]]
    return "\n".join(lines)


def _probe_line(sample: dict[str, Any]) -> str:
    if "error" in sample:
        return f"{sample['t']:>7} s  {sample['error']}"
    glibc, sqlite = sample["glibc"], sample["sqlite_kib"]
    arenas = " ".join(f"{name} {kib}" for name, kib in sample["arenas_kib"].items()) or "-"
    return (
        f"{sample['t']:>7} s  rss {sample['rss_kib']}  main heap {sample['main_heap_kib']}  "
        f"thread arenas: {arenas}  other anonymous {sample['other_anon_kib']}  "
        f"glibc in use {glibc['in_use_kib']} free {glibc['free_kib']}"
        + (f"  sqlite {sqlite[0]} (high {sqlite[1]})" if sqlite else "")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--chunk", type=int, default=20, help="seconds of one wrk run")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE",
        help="an environment variable for both servers (repeatable)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for the JSON")
    parser.add_argument(
        "--probe", action="store_true", help="sample where memory sits inside the servers"
    )
    parser.add_argument("--render", type=Path, metavar="JSON", help="print a results file")
    args = parser.parse_args(argv)
    if args.render:
        print(render(json.loads(args.render.read_text())))
        return 0
    env = dict(value.partition("=")[::2] for value in args.env)
    if any(not name for name in env):
        parser.error("--env takes NAME=VALUE")
    try:
        wrk_path()
    except LoadError as exc:
        print(f"bench.soak: {exc}", file=sys.stderr)
        return 2

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="pipeserve-soak-") as tmp:
        results = soak(args.minutes, args.chunk, args.connections, env, Path(tmp), say, args.probe)
    dirty = "-dirty" if results["machine"]["dirty"] else ""
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{time.strftime('%Y-%m-%d')}-soak-{results['machine']['commit']}{dirty}.json"
    path.write_text(json.dumps(results, indent=1) + "\n")
    print(render(results))
    print(f"\nresults: {path}")
    return 0 if not results["invalid"] and not results["store_failures"] else 1


if __name__ == "__main__":
    sys.exit(main())
