"""The issue's targets checked against one run's results, and the tables people read."""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Target:
    name: str
    unit: str
    op: str  # ">=" or "<="
    limit: float
    measured: float | None
    note: str = ""

    @property
    def status(self) -> str:
        if self.measured is None:
            return "not measured"
        compare: Callable[[float, float], bool] = operator.ge if self.op == ">=" else operator.le
        return "met" if compare(self.measured, self.limit) else "NOT met"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "status": self.status}


def _get(results: dict[str, Any], *path: str) -> Any:
    value: Any = results
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _cell(results: dict[str, Any], workload: str, connections: int, key: str) -> Any:
    cell = _get(results, "workloads", workload, "connections", str(connections))
    if cell is None or not cell.get("valid", False):
        return None
    return cell[key]


def _ratio(top: Any, bottom: Any, key: str) -> float | None:
    return round(top[key] / bottom[key], 3) if top and bottom else None


def targets(results: dict[str, Any]) -> list[Target]:
    """The targets of issue 6, each from figures measured in this run."""
    found: list[Target] = []
    for workload, limit, label in (
        ("echo-def", 0.85, "echo `def`, recording off"),
        ("echo-async", 0.85, "echo `async def`, recording off"),
        ("echo-recording", 0.7, "echo, recording on (SQLite)"),
        ("echo-auth", 0.8, "echo, auth on"),
    ):
        measured = _cell(results, workload, 8, "rps_ratio")
        name = f"{label}: throughput at 8 connections / floor's"
        found.append(Target(name, "x", ">=", limit, measured))
    for workload in ("echo-def", "echo-async"):
        measured = _cell(results, workload, 1, "p50_added_ms")
        name = f"{workload}: p50 latency added at 1 connection"
        found.append(Target(name, "ms", "<=", 0.3, measured))
    for kind in ("sync", "async"):
        chain = _get(results, "inprocess", f"chain_{kind}") or {}
        name = f"runner overhead per step, {chain.get('steps', 1000)}-step {kind} chain"
        note = "in-process, median run / steps"
        found.append(Target(name, "us", "<=", 20, chain.get("us_per_step"), note))
    fanout = _get(results, "inprocess", "fanout") or {}
    startup = _get(results, "startup", "pipeserve") or {}
    found += [
        Target(
            "20-step chain: throughput at 8 connections / floor's echo-def", "x", ">=", 0.6,
            _ratio(_cell(results, "chain20", 8, "pipeserve"),
                   _cell(results, "echo-def", 8, "floor"), "rps"),
            "across two phases of the run; chain20's own floor ratio is in the table",
        ),
        Target(
            f"fan-out: {fanout.get('concurrent', 64)} concurrent invocations' wall time / one's",
            "x", "<=", 1.5, fanout.get("ratio"), "in-process runner",
        ),
        Target(
            "fan-out over HTTP: p50 at 64 connections / p50 at 1", "x", "<=", 1.5,
            _ratio(_cell(results, "fanout", 64, "pipeserve"),
                   _cell(results, "fanout", 1, "pipeserve"), "p50_ms"),
            "the same figure through the server",
        ),
        Target(
            "idle RSS, echo pipeline", "MiB", "<=", 80, startup.get("idle_rss_mb"),
            "RSS after /ready, median of cold starts",
        ),
        Target(
            "cold start to ready, echo pipeline", "s", "<=", 1.5, startup.get("cold_start_s"),
            "process start until GET /ready is 200",
        ),
    ]  # fmt: skip
    return found


def _row(cells: list[str], widths: list[int]) -> str:
    return "  ".join(
        c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    )


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [_row(header, widths), _row(["-" * w for w in widths], widths)]
    lines += [_row(r, widths) for r in rows]
    return "\n".join(lines)


def _ms(value: float) -> str:
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def load_table(results: dict[str, Any]) -> str:
    header = [
        "workload", "conn", "floor req/s", "pipeserve req/s", "ratio",
        "p50 floor ms", "p50 ps ms", "p50 +ms", "p99 floor ms", "p99 ps ms",
        "CPU/req floor us", "CPU/req ps us",
    ]  # fmt: skip
    rows = []
    for name, workload in results.get("workloads", {}).items():
        if "skipped" in workload:
            rows.append([name, "-", "skipped", *[""] * 9])
            continue
        for conns, cell in workload["connections"].items():
            floor, ps = cell["floor"], cell["pipeserve"]
            rows.append(
                [
                    name, conns, f"{floor['rps']:.0f}", f"{ps['rps']:.0f}",
                    f"{cell['rps_ratio']:.3f}" + ("" if cell["valid"] else " (errors!)"),
                    _ms(floor["p50_ms"]), _ms(ps["p50_ms"]), f"{cell['p50_added_ms']:+.3f}",
                    _ms(floor["p99_ms"]), _ms(ps["p99_ms"]),
                    f"{floor['cpu_us']:.0f}", f"{ps['cpu_us']:.0f}",
                ]
            )  # fmt: skip
    return _table(header, rows)


def memory_table(results: dict[str, Any]) -> str:
    header = [
        "workload", "idle RSS floor", "idle RSS ps", "loaded RSS floor", "loaded RSS ps",
        "cold start floor", "cold start ps",
    ]  # fmt: skip
    rows = []
    startup = results.get("startup")
    if startup:
        rows.append(
            [
                f"startup ({startup['spec'].split(':')[1]}, median)",
                f"{startup['floor']['idle_rss_mb']:.1f} MiB",
                f"{startup['pipeserve']['idle_rss_mb']:.1f} MiB",
                "",
                "",
                f"{startup['floor']['cold_start_s']:.3f} s",
                f"{startup['pipeserve']['cold_start_s']:.3f} s",
            ]
        )
    for name, workload in results.get("workloads", {}).items():
        if "skipped" in workload:
            continue
        rss, cold = workload["rss_mb"], workload["cold_start_s"]
        rows.append(
            [
                name,
                f"{rss['floor']['idle']:.1f} MiB",
                f"{rss['pipeserve']['idle']:.1f} MiB",
                f"{rss['floor']['loaded']:.1f} MiB",
                f"{rss['pipeserve']['loaded']:.1f} MiB",
                f"{cold['floor']:.3f} s",
                f"{cold['pipeserve']:.3f} s",
            ]
        )
    return _table(header, rows)


def inprocess_table(results: dict[str, Any]) -> str:
    rows = [
        [name, f"{c['floor_us']:.1f}", f"{c['pipeserve_us']:.1f}", f"{c['added_us']:+.1f}"]
        for name, c in results.get("inprocess", {}).get("asgi", {}).items()
    ]
    header = ["in-process (no socket)", "CPU/req floor us", "CPU/req ps us", "added us"]
    return _table(header, rows)


def targets_table(found: list[Target]) -> str:
    rows = [
        [
            t.name,
            "-" if t.measured is None else f"{t.measured:g} {t.unit}",
            f"{t.op} {t.limit:g} {t.unit}",
            t.status,
        ]
        for t in found
    ]
    return _table(["target", "measured", "wanted", "status"], rows)


def machine_line(results: dict[str, Any]) -> str:
    m = results["machine"]
    return (
        f"{m['cpu']}, {m['cores']} cores, Linux {m['kernel']}, Python {m['python']}, "
        f"uvicorn {m['packages']['uvicorn']} ({m['uvicorn_loop']}, {m['uvicorn_http']}), "
        f"starlette {m['packages']['starlette']}, {m['wrk']}; commit {m['commit']}"
        + (" (dirty)" if m["dirty"] else "")
        + f"; load average {results['load_average_before'][0]:.2f} before, "
        f"{results['load_average_after'][0]:.2f} after"
    )


# Runs before the run store (issue 3) skipped echo-recording; their files, which
# bench/README.md cites, still render.
def skipped_lines(results: dict[str, Any]) -> str:
    return "\n".join(
        f"{name} skipped: {w['skipped']}"
        for name, w in results.get("workloads", {}).items()
        if "skipped" in w
    )


def render(results: dict[str, Any]) -> str:
    return "\n\n".join(
        [
            machine_line(results),
            "\n".join(filter(None, [load_table(results), skipped_lines(results)])),
            memory_table(results),
            inprocess_table(results),
            targets_table([Target(**{k: v for k, v in t.items() if k != "status"})
                           for t in results["targets"]]),
        ]
    )  # fmt: skip
