"""Run the benchmarks: `python -m bench` (see bench/README.md).

Starts each workload's floor app and pipeserve with the same uvicorn settings, drives both
with wrk (alternated, several rounds, medians), prints the tables and the targets, and
writes everything to bench/results/<date>-<label>.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

from . import harness, report
from .load import LoadError, wrk_path
from .workloads import Workload, all_workloads

RESULTS = Path(__file__).resolve().parent / "results"


def _parse_env(values: list[str], names: set[str]) -> dict[str, dict[str, str]]:
    extra: dict[str, dict[str, str]] = {}
    for value in values:
        workload, _, assignment = value.partition(":")
        key, sep, setting = assignment.partition("=")
        if workload not in names or not sep or not key:
            raise SystemExit(
                f"bench: --env takes WORKLOAD:NAME=VALUE with WORKLOAD one of {sorted(names)}; "
                f"got {value!r}"
            )
        extra.setdefault(workload, {})[key] = setting
    return extra


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="one workload (echo-def), 1 connection, one 1 s run each: checks the harness",
    )
    parser.add_argument("--workloads", help="comma-separated names (default: all)")
    parser.add_argument("--rounds", type=int, default=5, help="runs of each server per cell")
    parser.add_argument("--seconds", type=int, default=2, help="length of one wrk run")
    parser.add_argument("--warmup", type=int, default=1, help="wrk warm-up per server")
    parser.add_argument(
        "--connections", help="comma-separated connection counts (default: each workload's)"
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="WORKLOAD:NAME=VALUE",
        help="an extra environment variable for pipeserve in one workload (repeatable)",
    )
    parser.add_argument("--label", help="names the results file (default: the commit)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for the JSON")
    parser.add_argument(
        "--render",
        type=Path,
        metavar="JSON",
        help="print the tables of a results file, run nothing",
    )
    args = parser.parse_args(argv)
    if args.seconds < 1:
        parser.error("--seconds takes a whole number of seconds, at least 1")
    if args.render:
        print(report.render(json.loads(args.render.read_text())))
        return 0

    try:
        wrk_path()
    except LoadError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="pipeserve-bench-") as tmp:
        workdir = Path(tmp)
        known = all_workloads(workdir)
        names = {w.name for w in known}
        extra_env = _parse_env(args.env, names)
        known = [dataclasses.replace(w, env={**w.env, **extra_env.get(w.name, {})}) for w in known]
        by_name = {w.name: w for w in known}
        if args.smoke:
            plan = harness.Plan(
                rounds=1, seconds=1, warmup=0, connections=(1,), chain_length=100,
                inprocess_repeats=1, fanout_concurrency=8, asgi_requests=100,
                asgi_pipelines=("echo-def",),
            )  # fmt: skip
            chosen = [by_name["echo-def"]]
            startup: Workload | None = None
        else:
            plan = harness.Plan(
                rounds=args.rounds,
                seconds=args.seconds,
                warmup=args.warmup,
                connections=tuple(int(c) for c in args.connections.split(","))
                if args.connections
                else None,
            )
            wanted = args.workloads.split(",") if args.workloads else [w.name for w in known]
            unknown = sorted(set(wanted) - names)
            if unknown:
                parser.error(f"unknown workload(s) {unknown}; known: {sorted(names)}")
            chosen = [by_name[n] for n in wanted]
            startup = by_name["echo-def"]

        def say(message: str) -> None:
            print(message, file=sys.stderr, flush=True)

        results = harness.run(chosen, plan, say, startup, workdir)

    results["targets"] = [t.to_json() for t in report.targets(results)]
    label = args.label
    if label is None:
        dirty = "-dirty" if results["machine"]["dirty"] else ""
        label = "smoke" if args.smoke else results["machine"]["commit"] + dirty
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{time.strftime('%Y-%m-%d')}-{label}.json"
    path.write_text(json.dumps(results, indent=1) + "\n")
    print(report.render(results))
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
