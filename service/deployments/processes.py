"""The server processes of local deployments: finding ours, stopping them, their address.

A server runs in a session of its own, so that one signal to its process group reaches it
and any uvicorn workers; children that left the group are signalled one by one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time

import psutil

from service.deployments.records import DeploymentError, DeploymentRecord, Status


def _alive(proc: psutil.Process) -> bool:
    try:
        # A zombie has exited; only its parent's wait is missing.
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def find_process(record: DeploymentRecord) -> psutil.Process | None:
    """The deployment's server process, if it still runs (and is still the one we started)."""
    if record.pid is None:
        return None
    try:
        proc = psutil.Process(record.pid)
        created = record.process_created
        if created is not None and abs(proc.create_time() - created) > 0.01:
            return None
    except psutil.NoSuchProcess:
        return None
    return proc if _alive(proc) else None


def status(record: DeploymentRecord) -> Status:
    if record.pid is None:
        return "stopped"
    return "running" if find_process(record) is not None else "stale"


def uptime(record: DeploymentRecord) -> float | None:
    proc = find_process(record)
    return None if proc is None else max(0.0, time.time() - proc.create_time())


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Those of `procs` still alive after up to `timeout` seconds. Not `psutil.wait_procs`:
    it waits for a zombie that is not our child until its parent reaps it, and an init that
    reaps nothing (a container's, often) never does; a zombie has exited all the same."""
    deadline = time.monotonic() + timeout
    alive = [p for p in procs if _alive(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if _alive(p)]
    return alive


def stop_process(proc: psutil.Process, timeout: float) -> bool:
    """SIGTERM the process group `proc` leads, wait `timeout`, then SIGKILL what is left.

    Returns False if it had to SIGKILL. Children that left the group are signalled too.
    """
    try:
        members = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return True
    _signal_group(proc.pid, signal.SIGTERM)
    for member in members[1:]:
        with contextlib.suppress(psutil.NoSuchProcess):
            if os.getpgid(member.pid) != proc.pid:
                member.terminate()
    alive = _wait_gone(members, timeout)
    if not alive:
        return True
    _signal_group(proc.pid, signal.SIGKILL)
    for member in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    left = _wait_gone(alive, 10)
    if left:
        raise DeploymentError(f"processes {[p.pid for p in left]} survived SIGKILL")
    return False


def free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def url_for(host: str, port: int) -> str:
    """The URL to reach a server listening on `host`: a wildcard is reached on loopback."""
    connect = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    if ":" in connect:
        connect = f"[{connect}]"
    return f"http://{connect}:{port}"
