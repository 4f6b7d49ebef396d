"""Starting one deployment's server: `python -P -m service serve SPEC`, detached, until ready.

The server runs in the deploying command's working directory, which is where it imports
the pipeline from: `-P` keeps that directory off `sys.path` until pipeserve itself is
imported (a user's own `service/` package there cannot shadow it), then the CLI's `main()`
puts it first, as `python -m` would.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from service.auth import hash_setting
from service.deployments.logfiles import log_tail
from service.deployments.processes import free_port, stop_process, url_for
from service.deployments.readiness import ExitedEarly, wait_ready
from service.deployments.records import DeploymentError, DeploymentRecord
from service.settings import settings_env

# How often a free port may be taken by another process between our pick and the bind.
_PORT_TRIES = 3


class StartFailed(DeploymentError):
    """The server process exited or never became ready; `log` has its last lines."""

    def __init__(self, message: str, log: list[str], port_taken: bool = False) -> None:
        super().__init__(message)
        self.log = log
        self.port_taken = port_taken


def server_env(
    home: Path, name: str, settings: dict[str, Any], key_hash: str | None
) -> dict[str, str]:
    """The server's environment: ours (PYTHONPATH and all, so that it finds what we find)
    with its settings as `PIPESERVE_*` variables instead of the shell's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPESERVE_")}
    env.update(settings_env(settings))
    env["PIPESERVE_NAME"] = name
    env["PIPESERVE_HOME"] = str(home)
    if key_hash is not None:
        given = env.get("PIPESERVE_AUTH_KEY_HASHES", "")
        env["PIPESERVE_AUTH_KEY_HASHES"] = hash_setting([("deployment", key_hash)], given)
    # Logs reach the file line by line, as `logs -f` expects.
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass(frozen=True)
class Launch:
    """One server to start for deployment `name` with `python`, ready within
    `ready_timeout` seconds; `port` None or 0 is a free one."""

    name: str
    spec: str
    host: str
    port: int | None
    env: dict[str, str]
    settings: dict[str, Any]
    log_path: Path
    python: str
    ready_timeout: float


def start(launch: Launch, notify: Callable[[str], None]) -> DeploymentRecord:
    """Start the server and wait until it is ready: its record, not saved yet."""
    tries = 1 if launch.port else _PORT_TRIES
    for attempt in range(1, tries + 1):
        chosen = launch.port or free_port(launch.host)
        try:
            return _start_once(launch, chosen)
        except StartFailed as exc:
            if not exc.port_taken or attempt == tries:
                raise
            notify(f"port {chosen} was taken meanwhile; trying another")
    raise AssertionError("unreachable")


def _start_once(launch: Launch, port: int) -> DeploymentRecord:
    launch.log_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    env = {**launch.env, "PIPESERVE_HOST": launch.host, "PIPESERVE_PORT": str(port)}
    cwd = os.getcwd()
    with launch.log_path.open("ab") as log:
        offset = log.tell()
        # A session of its own: the server outlives this command, ignores the terminal's
        # Ctrl-C, and one killpg reaches all its processes.
        proc = subprocess.Popen(
            [launch.python, "-P", "-m", "service", "serve", launch.spec],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
    url = url_for(launch.host, port)
    try:
        _wait_ready(proc, url, launch, offset)
    except BaseException:
        with contextlib.suppress(psutil.NoSuchProcess):
            stop_process(psutil.Process(proc.pid), 10)
        proc.wait()
        raise
    return DeploymentRecord(
        name=launch.name,
        pipeline=launch.spec,
        host=launch.host,
        port=port,
        port_fixed=bool(launch.port),
        url=url,
        log_file=str(launch.log_path),
        cwd=cwd,
        pid=proc.pid,
        process_created=psutil.Process(proc.pid).create_time(),
        started_at=datetime.now(UTC).isoformat(),
        settings=launch.settings,
    )


def _wait_ready(proc: subprocess.Popen[bytes], url: str, launch: Launch, offset: int) -> None:
    try:
        wait_ready(proc, url, launch.ready_timeout, interval=0.1)
    except ExitedEarly as exc:
        tail = log_tail(launch.log_path, 30, offset)
        taken = any("address already in use" in line.lower() for line in tail)
        raise StartFailed(str(exc), tail, taken) from None
    except TimeoutError:
        raise StartFailed(
            f"the server was not ready at {url}/ready within "
            f"{launch.ready_timeout:g} s; stopped it",
            log_tail(launch.log_path, 30, offset),
        ) from None
