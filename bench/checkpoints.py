"""What step checkpoints cost a batch run: runs per second of the 3-step `etl` pipeline
(small outputs: lists of a few hundred ints) with checkpoints (the default) and without
(`@pipeline(resume=False)`), measured side by side in one run, as a ratio.

    python -m bench.checkpoints [--runs 200] [--rounds 4] [--database-url URL] [--smoke]

Each server has its own run store (a SQLite file each, or one PostgreSQL database under
two deployment names). A round submits `--runs` runs to one server, then to the other
(the order flips each round), and times each from the first submit to the end of the last
run. The ratio is the median of the per-round ratios. The checkpointed server must report
3 checkpoints written per run (`pipeserve_checkpoints_total`), or the round is invalid.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench import machine
from bench.servers import Server, start_pipeserve

RESULTS = Path(__file__).resolve().parent / "results"
BODY = {"parameters": {"source": "s3://bucket/data.csv", "limit": 500, "label": "sum"}}
SUBMITTERS = 16
_WRITTEN = re.compile(r'^pipeserve_checkpoints_total\{outcome="written"\} (\S+)$', re.M)
_BYTES = re.compile(r"^pipeserve_checkpoint_bytes_total (\S+)$", re.M)


async def one_round(url: str, runs: int) -> float:
    """Seconds from the first submit to the end of the last of `runs` runs."""
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        t0 = time.perf_counter()
        queue = list(range(runs))
        ids: list[str] = []

        async def submitter() -> None:
            while queue:
                queue.pop()
                answer = await http.post("/runs", json=BODY)
                answer.raise_for_status()
                ids.append(answer.json()["run_id"])

        await asyncio.gather(*(submitter() for _ in range(SUBMITTERS)))
        pending = set(ids)
        while pending:
            page = (await http.get("/runs", params={"limit": 500})).json()["runs"]
            ended = {r["run_id"] for r in page if r["status"] in ("succeeded", "failed")}
            failed = [r for r in page if r["run_id"] in pending and r["status"] == "failed"]
            if failed:
                raise RuntimeError(f"a benchmark run failed: {failed[0]['error']}")
            pending -= ended
            if pending:
                await asyncio.sleep(0.01)
        return time.perf_counter() - t0


def metric(server: Server, pattern: re.Pattern[str]) -> float:
    found = pattern.search(httpx.get(server.url + "/metrics", timeout=10).text)
    return float(found.group(1)) if found else 0.0


def measure(runs: int, rounds: int, database_url: str | None, workdir: Path) -> dict[str, Any]:
    servers: dict[str, Server] = {}
    for name, spec in (("checkpoints", "etl"), ("no_checkpoints", "etl_unchecked")):
        url = database_url or f"sqlite:///{workdir / f'{name}.db'}"
        env = {"PIPESERVE_DATABASE_URL": url, "PIPESERVE_NAME": f"bench-{name}",
               "PIPESERVE_POLL_INTERVAL": "0.05", "PIPESERVE_RECORD_INVOCATIONS": "false"}  # fmt: skip
        servers[name] = start_pipeserve(f"bench.pipelines:{spec}", workdir / f"{name}.log", env)
    try:
        rows: list[dict[str, Any]] = []
        for round_no in range(rounds):
            order = ["checkpoints", "no_checkpoints"]
            if round_no % 2:
                order.reverse()
            written_before = metric(servers["checkpoints"], _WRITTEN)
            seconds = {name: asyncio.run(one_round(servers[name].url, runs)) for name in order}
            written = metric(servers["checkpoints"], _WRITTEN) - written_before
            rows.append({
                "order": order,
                "runs_per_second": {n: round(runs / s, 1) for n, s in seconds.items()},
                "ratio": round(seconds["no_checkpoints"] / seconds["checkpoints"], 3),
                "checkpoints_written": written,
                "valid": written == 3 * runs,
            })  # fmt: skip
        valid = [r for r in rows if r["valid"]]
        total_bytes = metric(servers["checkpoints"], _BYTES)
        return {
            "runs_per_round": runs,
            "database": "postgresql" if database_url else "sqlite",
            "rounds": rows,
            "ratio_median": round(statistics.median(r["ratio"] for r in valid), 3)
            if valid
            else None,
            "runs_per_second_median": {
                name: statistics.median(r["runs_per_second"][name] for r in valid)
                for name in servers
            }
            if valid
            else None,
            "checkpoint_bytes_per_run": round(total_bytes / (runs * rounds), 1),
        }
    finally:
        for server in servers.values():
            server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.checkpoints", description=__doc__)
    parser.add_argument("--runs", type=int, default=200, help="runs per server per round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--database-url", help="one PostgreSQL database for both servers")
    parser.add_argument("--smoke", action="store_true", help="10 runs, 1 round: checks it works")
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for the JSON")
    parser.add_argument("--label", help="names the results file (default: the commit)")
    args = parser.parse_args(argv)
    runs, rounds = (10, 1) if args.smoke else (args.runs, args.rounds)
    with tempfile.TemporaryDirectory(prefix="pipeserve-bench-ckpt-") as tmp:
        results = measure(runs, rounds, args.database_url, Path(tmp))
    results["machine"] = machine.describe(load="httpx")
    label = "smoke" if args.smoke else args.label or results["machine"].get("commit", "local")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{time.strftime('%Y-%m-%d')}-{label}-checkpoints-{results['database']}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    for row in results["rounds"]:
        print(json.dumps(row), file=sys.stderr)
    print(
        f"batch runs/s with checkpoints / without: {results['ratio_median']} "
        f"({results['runs_per_second_median']}), "
        f"{results['checkpoint_bytes_per_run']} checkpoint bytes a run; wrote {path}"
    )
    return 0 if results["ratio_median"] is not None else 1


if __name__ == "__main__":
    raise SystemExit(main())
