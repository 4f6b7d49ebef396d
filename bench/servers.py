"""Server processes under test: started cold, timed to ready, measured with psutil."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from service.deployments.readiness import ExitedEarly, wait_ready

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MiB."""
    return float(psutil.Process(pid).memory_info().rss / 2**20)


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a process (all its threads, not its children) has used."""
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


@dataclass
class Server:
    """A running server: pipeserve or a floor app, one process, its log in a file."""

    kind: str  # "floor" or "pipeserve"
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    cold_start: float

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss_mb(self) -> float:
        return rss_mb(self.proc.pid)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.proc.pid)

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 30) -> int:
        self.terminate()
        if self.proc.poll() is None:
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def start(
    kind: str,
    command: list[str],
    port: int,
    log_path: Path,
    env: dict[str, str],
    timeout: float = 120,
) -> Server:
    """Start a server and wait until GET /ready answers 200: its cold start is that wait."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PIPESERVE_")}
    # The caller's PYTHONPATH (a `sitecustomize` probe, say) comes after the checkout's.
    path = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    full_env.update({**env, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"})
    with log_path.open("wb") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, *command],
            cwd=ROOT,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        # Polled often: the cold start is this wait.
        wait_ready(proc, f"http://127.0.0.1:{port}", timeout, interval=0.005)
    except (ExitedEarly, TimeoutError):
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        text = log_path.read_text(errors="replace")
        raise RuntimeError(
            f"{kind} ({' '.join(command)}) did not get ready "
            f"(exit code {proc.returncode}):\n{text[-4000:]}"
        ) from None
    return Server(kind, port, proc, log_path, time.perf_counter() - t0)


def start_pipeserve(spec: str, log_path: Path, env: dict[str, str]) -> Server:
    """pipeserve on `spec`, its home a fresh directory beside its log: nothing in the
    user's ~/.local/share/pipeserve (an auth_keys.json would turn auth on) reaches it."""
    port = free_port()
    command = ["-P", "-m", "service", "serve", spec, "--host", "127.0.0.1", "--port", str(port)]
    home = tempfile.mkdtemp(prefix=f"{log_path.stem}-home-", dir=log_path.parent)
    return start("pipeserve", command, port, log_path, {"PIPESERVE_HOME": home, **env})


def start_floor(floor: str, log_path: Path, env: dict[str, str] | None = None) -> Server:
    port = free_port()
    command = ["-m", "bench.floor", floor, "--host", "127.0.0.1", "--port", str(port)]
    return start("floor", command, port, log_path, env or {})
