"""Waiting for a server process to be ready: the one loop the deployer, the tests and the
benchmarks all wait with."""

from __future__ import annotations

import subprocess
import time

import httpx


class ExitedEarly(Exception):
    """The process ended before the server answered; `code` is its exit code."""

    def __init__(self, code: int) -> None:
        super().__init__(f"the server exited with code {code} before it was ready")
        self.code = code


def wait_ready(
    proc: subprocess.Popen[bytes],
    url: str,
    timeout: float,
    *,
    path: str = "/ready",
    status: int = 200,
    interval: float = 0.05,
) -> httpx.Response:
    """Poll `url + path` until it answers `status`, and return that answer.

    Raises `ExitedEarly` when the process ends first, and `TimeoutError` (naming the last
    answer or connection error) after `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    # trust_env=False: a proxy from the environment must not stand between us and loopback.
    with httpx.Client(timeout=2, trust_env=False) as http:
        while True:
            code = proc.poll()
            if code is not None:
                raise ExitedEarly(code)
            try:
                answer = http.get(url + path)
                if answer.status_code == status:
                    return answer
                last = answer
            except httpx.TransportError as exc:
                last = exc
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{url}{path} did not answer {status} in {timeout:g} s (last: {last!r})"
                )
            time.sleep(interval)
