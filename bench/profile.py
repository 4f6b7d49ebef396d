"""Profile pipeserve's hot path under wrk load with py-spy, and say where the time goes.

    python -m bench.profile echo-async --connections 8 --seconds 10

Starts pipeserve on the workload, loads it with wrk, samples it with `py-spy record`
(raw collapsed stacks, which speedscope and flamegraph.pl also read), and prints the
functions with the largest share of samples: inclusive (on the stack) and self (on top).
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from .load import run_wrk
from .servers import start_pipeserve
from .workloads import all_workloads


def _frame_name(frame: str) -> str:
    # py-spy writes "function (path/to/file.py)"; keep the file's last two parts.
    func, _, where = frame.partition(" (")
    parts = where.rstrip(")").split("/")
    return f"{func} ({'/'.join(parts[-2:])})" if where else func


def summarize(raw: Path, top: int = 30) -> str:
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(f) for f in stack.split(";")]
        total += count
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    if total == 0:
        return "no samples"
    lines = [f"{total} samples"]
    for title, counter in (("inclusive", inclusive), ("self", own)):
        lines.append(f"\n{title}:")
        lines += [f"{100 * n / total:6.1f}%  {name}" for name, n in counter.most_common(top)]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("workload")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--out", type=Path, help="where to keep the raw stacks")
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    with tempfile.TemporaryDirectory(prefix="pipeserve-profile-") as tmp:
        workdir = Path(tmp)
        workload = {w.name: w for w in all_workloads(workdir)}[args.workload]
        server = start_pipeserve(workload.spec, workdir / "server.log", workload.env)
        try:
            url = server.url + "/invoke"
            run_wrk(url, args.connections, 1, workload.body, workload.key)
            load = threading.Thread(
                target=run_wrk,
                args=(url, args.connections, args.seconds + 2, workload.body, workload.key),
            )
            load.start()
            raw = args.out or workdir / "stacks.txt"
            command = [
                py_spy, "record", "--pid", str(server.proc.pid), "--duration",
                str(args.seconds), "--rate", str(args.rate), "--format", "raw",
                "--nolineno", "--nonblocking", "--output", str(raw),
            ]  # fmt: skip
            subprocess.run(
                command,
                check=True,
                capture_output=True,
            )
            load.join()
            print(summarize(raw, args.top))
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
