"""Test fixtures: real servers, started as `pipeserve serve` processes on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.deployments.readiness import ExitedEarly, wait_ready

ROOT = Path(__file__).resolve().parent.parent


def require_binary(name: str, package: str) -> str:
    """The path of a system tool; skip without it, but fail in CI, where .ci/run installs it."""
    path = shutil.which(name)
    if path is None:
        message = f"'{name}' is not installed: apt-get install -y {package} (.ci/run does this)"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return path


def in_ci() -> bool:
    return os.environ.get("CI") == "true"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPESERVE_")}
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


@dataclass
class ServerProcess:
    """A real pipeserve server process; its output goes to a log file."""

    url: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    extra: dict[str, Any] = field(default_factory=dict)

    def client(self, **kwargs: Any) -> httpx.Client:
        kwargs.setdefault("timeout", 30)
        return httpx.Client(base_url=self.url, **kwargs)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, path: str, status: int = 200, timeout: float = 30) -> httpx.Response:
        try:
            return wait_ready(self.proc, self.url, timeout, path=path, status=status)
        except ExitedEarly as exc:
            raise RuntimeError(
                f"server exited with {exc.code} before {path} answered {status}:\n{self.logs()}"
            ) from None
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}:\n{self.logs()}") from None

    def wait_all_workers_ready(self, timeout: float = 30) -> None:
        """With --workers N, /ready came from one worker; wait until 20 in a row say 200."""
        deadline = time.monotonic() + timeout
        while not all(httpx.get(self.url + "/ready").status_code == 200 for _ in range(20)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"not every worker became ready:\n{self.logs()}")
            time.sleep(0.1)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


class ServerFactory:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.servers: list[ServerProcess] = []

    def start(
        self,
        spec: str,
        *args: str,
        env: dict[str, str] | None = None,
        wait: str | None = "/ready",
        port: int | None = None,
        timeout: float = 60,
        preexec_fn: Callable[[], object] | None = None,
    ) -> ServerProcess:
        """`preexec_fn` runs in the child before the server starts (e.g. to set rlimits)."""
        port = port or free_port()
        log_path = self.tmp_path / f"server-{port}-{len(self.servers)}.log"
        # Never the user's own home: its keys and runs are not the test's.
        env = {"PIPESERVE_HOME": str(self.tmp_path / "home"), **(env or {})}
        command = [
            sys.executable, "-P", "-m", "service", "serve", spec,
            "--host", "127.0.0.1", "--port", str(port), *args,
        ]  # fmt: skip
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                command, cwd=ROOT, env=server_env(env), stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, preexec_fn=preexec_fn,
            )  # fmt: skip
        server = ServerProcess(f"http://127.0.0.1:{port}", port, proc, log_path)
        self.servers.append(server)
        if wait:
            server.wait_for(wait, timeout=timeout)
        return server

    def stop_all(self) -> None:
        for server in self.servers:
            server.stop(signal.SIGTERM, timeout=15)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[ServerFactory]:
    """Start real servers in a test; all are stopped at its end."""
    factory = ServerFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture(scope="module")
def module_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerFactory]:
    """Like `servers`, shared by the tests of one module (a server costs a second to start)."""
    factory = ServerFactory(tmp_path_factory.mktemp("servers"))
    try:
        yield factory
    finally:
        factory.stop_all()


POSTGRES = os.environ.get("PIPESERVE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh schema in the real PostgreSQL, as a database URL; dropped after the test.

    Skips without a reachable server (fails where CI=true, so CI never skips it).
    """
    import uuid

    import psycopg

    try:
        admin = psycopg.connect(POSTGRES, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        message = (
            f"PostgreSQL is not reachable at {POSTGRES} ({str(exc).strip()}): start one with "
            "trust auth and a database `test` on 127.0.0.1:5432, or point "
            "PIPESERVE_TEST_POSTGRES at one"
        )
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    schema = f"pipeserve_test_{uuid.uuid4().hex[:12]}"
    with admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
        try:
            yield f"{POSTGRES}?options=-csearch_path%3D{schema}"
        finally:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each run store test runs on a real SQLite file and on the real PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'runs.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


def start_together(
    factory: ServerFactory, servers: dict[str, tuple[str, list[str], dict[str, str]]]
) -> dict[str, str]:
    """Start several servers at once (their start-ups overlap): name -> (spec, args, env).
    Their URLs by name, once every one is ready."""
    started = {
        name: factory.start(spec, *args, env=env, wait=None)
        for name, (spec, args, env) in servers.items()
    }
    for server in started.values():
        server.wait_for("/ready", timeout=60)
    return {name: server.url for name, server in started.items()}
