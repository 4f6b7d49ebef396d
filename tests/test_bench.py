"""The benchmark harness (bench/): its smoke mode end to end, the per-cell ratio, and
whatif's patches against today's app, so that none of it can rot unnoticed.

Only that it runs, reports and computes what it says is checked here: speed targets are
ratios that bench/ reports, never assertions in tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench import harness, soak, whatif
from bench import pipelines as bp
from bench.load import LoadResult
from tests.conftest import ROOT, require_binary, server_env


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=ROOT,
        env=server_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_harness_runs_end_to_end_in_smoke_mode_and_renders_its_json(tmp_path: Path) -> None:
    require_binary("wrk", "wrk")
    done = _bench("--smoke", "--out", str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    [path] = tmp_path.glob("*-smoke.json")
    results = json.loads(path.read_text())

    cell = results["workloads"]["echo-def"]["connections"]["1"]
    assert cell["valid"], cell
    for kind in ("floor", "pipeserve"):
        [run] = cell[kind]["runs"]
        assert run["requests"] > 0 and run["errors"] == 0 and run["bad_status"] == 0, run
        assert cell[kind]["p50_ms"] > 0
        assert results["workloads"]["echo-def"]["rss_mb"][kind]["idle"] > 0
    assert results["machine"]["cores"] >= 1 and results["machine"]["packages"]["uvicorn"]
    assert results["inprocess"]["chain_sync"]["us_per_step"] > 0
    statuses = {t["name"]: t["status"] for t in results["targets"]}
    assert statuses["echo-def: p50 latency added at 1 connection"] in ("met", "NOT met")
    assert statuses["idle RSS, echo pipeline"] == "not measured"  # no startup phase in smoke
    tables, _, where = done.stdout.rpartition("\n\nresults: ")
    assert "pipeserve req/s" in tables and where.strip() == str(path)

    rendered = _bench("--render", str(path))
    assert rendered.returncode == 0, rendered.stderr
    assert rendered.stdout.rstrip("\n") == tables


def test_the_checkpoint_benchmark_runs_in_smoke_mode(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.checkpoints", "--smoke", "--out", str(tmp_path)],
        cwd=ROOT, env=server_env(), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    [path] = tmp_path.glob("*-smoke-checkpoints-sqlite.json")
    results = json.loads(path.read_text())
    [row] = results["rounds"]
    # Three checkpoints a run (etl's three steps), none for the resume=False twin.
    assert row["valid"] and row["checkpoints_written"] == 3 * results["runs_per_round"]
    assert results["ratio_median"] > 0 and results["checkpoint_bytes_per_run"] > 0
    assert set(row["runs_per_second"]) == {"checkpoints", "no_checkpoints"}


def _run(rps: float, errors: int = 0) -> LoadResult:
    return LoadResult(
        connections=8, requests=int(rps * 2), seconds=2.0, rps=rps, p50_ms=1.0, p90_ms=2.0,
        p99_ms=3.0, max_ms=4.0, errors=errors, bad_status=0, cpu_us=100.0,
    )  # fmt: skip


def test_a_cells_ratio_is_the_median_of_its_rounds_ratios_not_the_ratio_of_medians() -> None:
    floor = [_run(100), _run(200), _run(300)]
    pipeserve = [_run(90), _run(100), _run(330)]  # rounds' ratios 0.9, 0.5, 1.1
    cell = harness.summarize({"floor": floor, "pipeserve": pipeserve})
    assert cell["rps_ratios"] == [0.9, 0.5, 1.1]
    assert cell["rps_ratio"] == 0.9  # the ratio of the medians would be 100 / 200
    assert (cell["floor"]["rps"], cell["pipeserve"]["rps"]) == (200, 100)
    assert cell["valid"]

    pipeserve[1] = _run(100, errors=1)
    assert not harness.summarize({"floor": floor, "pipeserve": pipeserve})["valid"]


def test_whatifs_patches_still_apply_to_the_app() -> None:
    found = whatif.measure(bp.echo_async, "echo-async", n=50, rounds=1)
    labels = ["floor", "now", *(label for label, _ in whatif.ATTRIBUTION)]
    assert list(found) == labels
    assert all(found[label] > 0 for label in labels), found


def test_the_soak_runs_both_servers_with_store_traffic_and_judges_past_the_warm_up(
    tmp_path: Path,
) -> None:
    require_binary("wrk", "wrk")
    done = subprocess.run(
        [sys.executable, "-m", "bench.soak", "--minutes", "0.04", "--chunk", "1",
         "--env", "SOAK_MARK=1", "--probe", "--env", "BENCH_PROBE_INTERVAL=0.3",
         "--out", str(tmp_path)],
        cwd=ROOT, env=server_env(), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    [path] = tmp_path.glob("*-soak-*.json")
    results = json.loads(path.read_text())
    assert results["requests"]["floor"] > 0 and results["requests"]["pipeserve"] > 0
    assert results["batch_runs"] > 0 and results["store_failures"] == []
    assert len(results["samples"]["pipeserve"]) >= 3  # the start, then after each chunk
    assert {t["name"] for t in results["targets"]} == {
        "RSS creep, last third less middle third (medians), pipeserve less floor",
        "RSS slope of the last two thirds, pipeserve less floor",
    }
    assert results["env"] == {"SOAK_MARK": "1", "BENCH_PROBE_INTERVAL": "0.3"}
    assert "MiB/10min" in done.stdout
    # The probe sampled inside both: pipeserve's store thread has its arena, SQLite its
    # memory; the floor has neither.
    last = {kind: samples[-1] for kind, samples in results["probe"].items()}
    assert "error" not in last["pipeserve"] and "error" not in last["floor"]
    assert last["pipeserve"]["arenas_kib"]["pipeserve-store"] > 0
    assert last["pipeserve"]["sqlite_kib"][0] > 0 and last["floor"]["sqlite_kib"][0] == 0
    assert "pipeserve-store" not in last["floor"]["arenas_kib"]
    assert last["pipeserve"]["glibc"]["in_use_kib"] > 0
    assert "probe of pipeserve (KiB)" in done.stdout


def test_the_soak_judges_creep_and_slope_after_the_warm_up_only() -> None:
    # 30 minutes: +20 MiB in the first 10 (warm-up), then +1 MiB every 10 minutes.
    samples = [(t * 60.0, 50 + min(t, 10) * 2 + max(0, t - 10) * 0.1) for t in range(31)]
    judged = soak.judge(samples)
    assert judged["middle_median_mb"] == 70.45 and judged["last_median_mb"] == 71.5
    assert judged["creep_mb"] == 1.05 and judged["max_mb"] == 72.0
    assert abs(judged["slope_mb_per_10min"] - 1.0) < 0.01
    assert soak.slope_per_10min([(0.0, 5.0)]) == 0.0
