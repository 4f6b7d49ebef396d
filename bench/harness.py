"""The side-by-side run: each workload's floor and pipeserve, alternated, medians kept."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from . import asgi, inprocess
from . import pipelines as bp
from .floor import FLOORS
from .load import LoadResult, run_wrk
from .machine import describe, load_average
from .servers import Server, start_floor, start_pipeserve
from .workloads import Workload


@dataclass(frozen=True)
class Plan:
    rounds: int = 5  # floor and pipeserve runs per connection count, alternated
    seconds: int = 2  # one wrk run (wrk takes whole seconds)
    warmup: int = 1  # one wrk run on each server before measuring
    connections: tuple[int, ...] | None = None  # None: each workload's own
    startup_rounds: int = 3  # cold starts of each kind for the startup figures
    chain_length: int = 1000
    inprocess_repeats: int = 5
    fanout_concurrency: int = 64
    asgi_requests: int = 3000  # per round, in-process (bench/asgi.py)
    asgi_pipelines: tuple[str, ...] = ("echo-async", "echo-def", "chain20")


def _shape(value: Any) -> Any:
    """A document with every leaf replaced by its JSON type: values differ per run."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(v) for v in value[:1]]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


def check_same_answer(floor: Server, pipeserve: Server, workload: Workload) -> None:
    """Both answer 200 with the same outputs and the same response shape, or the run stops."""
    headers = {"Content-Type": "application/json"}
    documents = []
    for server in (floor, pipeserve):
        extra = {"Authorization": f"Bearer {workload.key}"} if workload.key else {}
        if server is pipeserve and workload.key:
            # Auth must be on: without the key, pipeserve says 401.
            bare = httpx.post(server.url + "/invoke", content=workload.body, headers=headers)
            if bare.status_code != 401:
                raise RuntimeError(f"{workload.name}: auth is not on ({bare.status_code})")
        response = httpx.post(
            server.url + "/invoke", content=workload.body, headers={**headers, **extra}, timeout=30
        )
        if response.status_code != 200:
            raise RuntimeError(
                f"{workload.name}: {server.kind} answered {response.status_code}: {response.text}"
            )
        documents.append(response.json())
    floor_doc, ps_doc = documents
    if floor_doc["outputs"] != ps_doc["outputs"]:
        raise RuntimeError(
            f"{workload.name}: outputs differ: floor {floor_doc['outputs']!r}, "
            f"pipeserve {ps_doc['outputs']!r}"
        )
    if _shape(floor_doc) != _shape(ps_doc):
        raise RuntimeError(
            f"{workload.name}: response shapes differ:\n"
            f"floor     {_shape(floor_doc)}\npipeserve {_shape(ps_doc)}"
        )


def _median(runs: list[LoadResult], attribute: str) -> float:
    return float(statistics.median(getattr(r, attribute) for r in runs))


def summarize(runs: dict[str, list[LoadResult]]) -> dict[str, Any]:
    cell: dict[str, Any] = {}
    for kind, results in runs.items():
        cell[kind] = {
            "rps": round(_median(results, "rps"), 1),
            "p50_ms": round(_median(results, "p50_ms"), 3),
            "p99_ms": round(_median(results, "p99_ms"), 3),
            "cpu_us": round(_median(results, "cpu_us"), 1),
            "runs": [r.to_json() for r in results],
        }
    floor, ps = cell["floor"], cell["pipeserve"]
    # Each round's two runs are back to back, so their ratio sees the same machine load;
    # the median of those ratios is steadier than the ratio of the medians.
    pairs = zip(runs["floor"], runs["pipeserve"], strict=True)
    paired = [p.rps / f.rps if f.rps else 0.0 for f, p in pairs]
    cell["rps_ratio"] = round(statistics.median(paired), 3) if all(paired) else None
    cell["rps_ratios"] = [round(r, 3) for r in paired]
    cell["p50_added_ms"] = round(ps["p50_ms"] - floor["p50_ms"], 3)
    cell["p99_added_ms"] = round(ps["p99_ms"] - floor["p99_ms"], 3)
    cell["cpu_added_us"] = round(ps["cpu_us"] - floor["cpu_us"], 1)
    failures = sum(r.errors + r.bad_status for rs in runs.values() for r in rs)
    cell["valid"] = failures == 0
    return cell


def _load(server: Server, workload: Workload, connections: int, seconds: int) -> LoadResult:
    """One wrk run, with the server's CPU time per request: steadier than req/s when the
    machine is shared, since other processes' load changes it much less."""
    cpu = server.cpu_seconds()
    result = run_wrk(server.url + "/invoke", connections, seconds, workload.body, workload.key)
    return result.with_cpu(server.cpu_seconds() - cpu)


def measure_workload(
    workload: Workload, plan: Plan, workdir: Path, say: Callable[[str], None]
) -> dict[str, Any]:
    say(f"{workload.name}: starting {workload.floor} floor and {workload.spec}")
    floor = start_floor(workload.floor, workdir / f"{workload.name}-floor.log")
    servers = [floor]
    try:
        floor_idle = floor.rss_mb()
        ps = start_pipeserve(workload.spec, workdir / f"{workload.name}-ps.log", workload.env)
        servers.append(ps)
        ps_idle = ps.rss_mb()
        check_same_answer(floor, ps, workload)
        connections = plan.connections or workload.connections
        if plan.warmup > 0:
            for server in servers:
                run_wrk(server.url + "/invoke", max(connections), plan.warmup, workload.body,
                        workload.key)  # fmt: skip
        cells: dict[str, Any] = {}
        for c in connections:
            runs: dict[str, list[LoadResult]] = {"floor": [], "pipeserve": []}
            for r in range(plan.rounds):
                for server in servers if r % 2 == 0 else reversed(servers):
                    runs[server.kind].append(_load(server, workload, c, plan.seconds))
            cells[str(c)] = cell = summarize(runs)
            say(
                f"  {c:>3} conn: floor {cell['floor']['rps']:>8.0f}/s  pipeserve "
                f"{cell['pipeserve']['rps']:>8.0f}/s  ratio {cell['rps_ratio']:.3f}  "
                f"p50 {cell['p50_added_ms']:+.3f} ms  CPU {cell['cpu_added_us']:+.1f} us/request"
            )
        return {
            "what": workload.what,
            "load_average": load_average(),
            "spec": workload.spec,
            "floor": workload.floor,
            "env": {k: v for k, v in workload.env.items() if "HASH" not in k},
            "body": workload.body,
            "connections": cells,
            "rss_mb": {
                "floor": {"idle": round(floor_idle, 1), "loaded": round(floor.rss_mb(), 1)},
                "pipeserve": {"idle": round(ps_idle, 1), "loaded": round(ps.rss_mb(), 1)},
            },
            "cold_start_s": {
                "floor": round(floor.cold_start, 3),
                "pipeserve": round(ps.cold_start, 3),
            },
        }
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            server.stop()


def measure_startup(
    workload: Workload, plan: Plan, workdir: Path, say: Callable[[str], None]
) -> dict[str, Any]:
    """Cold start to ready and idle RSS, each server alone on the machine, alternated."""
    say(f"startup: {plan.startup_rounds} cold starts of each, {workload.spec}")
    samples: dict[str, dict[str, list[float]]] = {
        kind: {"cold_start_s": [], "idle_rss_mb": []} for kind in ("floor", "pipeserve")
    }
    starters: dict[str, Callable[[Path], Server]] = {
        "floor": lambda log: start_floor(workload.floor, log),
        "pipeserve": lambda log: start_pipeserve(workload.spec, log, workload.env),
    }
    for r in range(plan.startup_rounds):
        order = ["floor", "pipeserve"] if r % 2 == 0 else ["pipeserve", "floor"]
        for kind in order:
            server = starters[kind](workdir / f"startup-{kind}-{r}.log")
            try:
                time.sleep(0.2)
                samples[kind]["cold_start_s"].append(server.cold_start)
                samples[kind]["idle_rss_mb"].append(server.rss_mb())
            finally:
                server.stop()
    return {
        kind: {
            "cold_start_s": round(statistics.median(s["cold_start_s"]), 3),
            "idle_rss_mb": round(statistics.median(s["idle_rss_mb"]), 1),
            "samples": {k: [round(x, 3) for x in v] for k, v in s.items()},
        }
        for kind, s in samples.items()
    } | {"spec": workload.spec, "floor_app": workload.floor}


# The pipelines whose app cost is compared in-process (bench/asgi.py), with their floors.
ASGI_PIPELINES = {"echo-async": bp.echo_async, "echo-def": bp.echo_def, "chain20": bp.chain20}


def measure_inprocess(plan: Plan, say: Callable[[str], None]) -> dict[str, Any]:
    say(
        f"in-process: runner per step on a {plan.chain_length}-step chain, fan-out "
        f"concurrency, CPU per request of the apps without a socket"
    )
    return {
        "chain_sync": inprocess.per_step_us(plan.chain_length, False, plan.inprocess_repeats),
        "chain_async": inprocess.per_step_us(plan.chain_length, True, plan.inprocess_repeats),
        "fanout": inprocess.fanout_concurrency(plan.fanout_concurrency, plan.inprocess_repeats),
        "asgi": {
            name: asgi.compare(
                ASGI_PIPELINES[name], FLOORS[name]().app(), plan.asgi_requests, plan.rounds
            )
            for name in plan.asgi_pipelines
        },
    }


def run(
    workloads: list[Workload],
    plan: Plan,
    say: Callable[[str], None],
    startup: Workload | None,
    workdir: Path,
) -> dict[str, Any]:
    """Measure everything; servers' logs and data go to `workdir`."""
    started = time.time()
    results: dict[str, Any] = {
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "machine": describe(),
        "load_average_before": load_average(),
        "plan": {
            "rounds": plan.rounds,
            "seconds": plan.seconds,
            "warmup": plan.warmup,
            "wrk_threads": 1,
            "startup_rounds": plan.startup_rounds,
        },
    }
    if startup is not None:
        results["startup"] = measure_startup(startup, plan, workdir, say)
    results["workloads"] = {w.name: measure_workload(w, plan, workdir, say) for w in workloads}
    results["inprocess"] = measure_inprocess(plan, say)
    results["load_average_after"] = load_average()
    results["wall_seconds"] = round(time.time() - started, 1)
    return results
