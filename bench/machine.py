"""What the figures were measured on: CPU, kernel, Python, package versions, the tree."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from .load import wrk_version
from .servers import ROOT

PACKAGES = (
    "pipeserve", "starlette", "uvicorn", "uvloop", "httptools", "pydantic", "pydantic-core",
    "pydantic-settings", "orjson", "prometheus-client", "numpy", "pandas", "scikit-learn",
)  # fmt: skip


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return platform.processor() or "unknown"


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
    return done.stdout.strip()


def load_average() -> list[float]:
    return list(os.getloadavg())


def describe(load: str = "wrk") -> dict[str, Any]:
    """The machine, and `load`'s version: the wrk of the HTTP benchmarks, or none (a
    benchmark that drives its servers itself, as `bench.checkpoints` does)."""
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": {p: _version(p) for p in PACKAGES},
        # uvicorn's "auto" picks these for both servers when they import.
        "uvicorn_loop": "uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        "uvicorn_http": "httptools" if importlib.util.find_spec("httptools") else "h11",
        "wrk": wrk_version() if load == "wrk" else None,
        "commit": _git("rev-parse", "--short", "HEAD"),
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
    }
