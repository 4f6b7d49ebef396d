"""Deploying, updating and stopping local deployments: the decisions around each start.

An update starts the new server before it stops the old one, unless the port is fixed (the
new one could not bind it): then the old one goes first, and the user is told so. What the
user set before stays unless set again; secrets come back from `<name>.secrets`.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import psutil

from service.auth import generate_key, hash_key
from service.client import APIError, Client
from service.deployments.launch import Launch, server_env, start
from service.deployments.processes import find_process, status, stop_process
from service.deployments.records import (
    SECRET_SETTINGS,
    DeploymentError,
    DeploymentRecord,
    DeploymentStore,
    Status,
)
from service.files import write_private


@dataclass
class DeployResult:
    record: DeploymentRecord
    api_key: str | None = None
    replaced_pid: int | None = None


@dataclass(frozen=True)
class _Running:
    """A deployment's record and its server process, found running: the record is the
    old one, paired with its process so that one None check stands for both."""

    record: DeploymentRecord
    proc: psutil.Process


@dataclass
class Deployer:
    """Starts, replaces and stops local deployments; `notify` tells the user what happens."""

    store: DeploymentStore
    notify: Callable[[str], None] = lambda message: None
    ready_timeout: float = 120.0
    python: str = sys.executable

    def deploy(
        self,
        spec: str,
        name: str,
        settings: dict[str, Any],
        port: int | None = None,
        generate_auth_key: bool = False,
        update: bool = False,
    ) -> DeployResult:
        with self.store.lock(name):
            return self._deploy(spec, name, settings, port, generate_auth_key, update)

    def _deploy(
        self,
        spec: str,
        name: str,
        settings: dict[str, Any],
        port: int | None,
        generate_auth_key: bool,
        update: bool,
    ) -> DeployResult:
        old = self.store.get(name)
        running = self._running(name, old, update)
        if update and old is not None:
            settings, port = self._carried_over(name, old, settings, port)
        key, key_hash = self._auth_key(old if update else None, generate_auth_key)
        env = server_env(self.store.dir.parent, name, settings, key_hash)
        if running is not None and port:
            self._stop_before_start(running, port)
        host = str(settings.get("host") or "127.0.0.1")
        log_path = self.store.log_path(name)
        launch = Launch(
            name, spec, host, port, env, settings, log_path, self.python, self.ready_timeout
        )
        record = start(launch, self.notify)
        self._save(record, key, key_hash)
        if running is not None and not port:
            # The new process serves (and is recorded) before the old one goes.
            self.notify(
                f"new process (pid {record.pid}) ready at {record.url}; "
                f"stopping the old one (pid {running.proc.pid})"
            )
            stop_process(running.proc, running.record.stop_timeout)
        return DeployResult(record, key, running.proc.pid if running is not None else None)

    def _running(self, name: str, old: DeploymentRecord | None, update: bool) -> _Running | None:
        """The deployment's running server, which only an update may replace."""
        proc = find_process(old) if old is not None else None
        running = _Running(old, proc) if old is not None and proc is not None else None
        if running is not None and not update:
            raise DeploymentError(
                f"deployment '{name}' is running at {running.record.url} "
                f"(pid {running.proc.pid}): pass --update to replace it, or deprovision it first"
            )
        if old is not None and old.pid is not None and running is None:
            self.notify(f"deployment '{name}': pid {old.pid} is gone; replacing the stale record")
        if update and running is None:
            self.notify(f"deployment '{name}' is not running: deploying it")
        return running

    def _carried_over(
        self, name: str, old: DeploymentRecord, settings: dict[str, Any], port: int | None
    ) -> tuple[dict[str, Any], int | None]:
        """An update changes the code: the settings and fixed port of `old` stay unless
        given again."""
        shown = {k: v for k, v in old.settings.items() if k not in SECRET_SETTINGS}
        settings = {**shown, **self.store.secrets(name), **settings}
        lost = sorted(set(old.settings) & SECRET_SETTINGS - set(settings))
        if lost:
            raise DeploymentError(
                f"the secret settings of deployment '{name}' are gone "
                f"({self.store.secrets_path(name)}): set "
                f"{', '.join('PIPESERVE_' + k.upper() for k in lost)} again"
            )
        if port is None and old.port_fixed:
            port = old.port
        return settings, port

    @staticmethod
    def _auth_key(
        previous: DeploymentRecord | None, generate: bool
    ) -> tuple[str | None, str | None]:
        """(a new key, the hash the server gets): a new one, or the key `previous` kept."""
        if generate:
            key = generate_key()
            return key, hash_key(key)
        if previous is not None and previous.auth_key_file is not None:
            kept = previous.api_key()
            return None, hash_key(kept) if kept else None
        return None, None

    def _stop_before_start(self, running: _Running, port: int) -> None:
        self.notify(
            f"port {port} is fixed: stopping the old process (pid {running.proc.pid}) before "
            "starting the new one; the deployment is down meanwhile"
        )
        stop_process(running.proc, running.record.stop_timeout)
        running.record.pid, running.record.process_created = None, None
        self.store.save(running.record)

    def _save(self, record: DeploymentRecord, key: str | None, key_hash: str | None) -> None:
        """Record the started server, its secrets apart and its new key, if one was made."""
        name = record.name
        record.settings = self.store.save_secrets(name, record.settings)
        if key is not None:
            write_private(self.store.key_path(name), key + "\n")
        if key_hash is not None:
            record.auth_key_file = str(self.store.key_path(name))
        else:
            self.store.key_path(name).unlink(missing_ok=True)
        self.store.save(record)

    def deprovision(self, name: str, timeout: float | None = None) -> tuple[Status, bool]:
        """Stop the deployment, keep its record: (status before, whether it stopped cleanly)."""
        with self.store.lock(name):
            record = self.store.load(name)
            before, clean = self._stop_recorded(record, timeout)
            if record.pid is not None:
                record.pid = None
                record.process_created = None
                self.store.save(record)
            return before, clean

    def delete(self, name: str, timeout: float | None = None) -> tuple[Status, bool]:
        """Deprovision if running, then remove the record, its log and its key."""
        with self.store.lock(name):
            before, clean = self._stop_recorded(self.store.load(name), timeout)
            self.store.remove(name)
            return before, clean

    def _stop_recorded(
        self, record: DeploymentRecord, timeout: float | None
    ) -> tuple[Status, bool]:
        before = status(record)
        proc = find_process(record)
        if proc is None:
            return before, True
        return before, stop_process(proc, record.stop_timeout if timeout is None else timeout)


@contextlib.contextmanager
def talking_to(read: str, reach: str | None = None) -> Iterator[None]:
    """The client's errors as a `DeploymentError`: an error answer as `cannot read READ`,
    no answer (the connection, a timeout) as `cannot reach REACH` (or READ's)."""
    try:
        yield
    except APIError as exc:
        raise DeploymentError(f"cannot read {read}: {exc}") from exc
    except httpx.HTTPError as exc:
        where = f"reach {reach}" if reach is not None else f"read {read}"
        raise DeploymentError(f"cannot {where}: {exc}") from exc


def fetch_info(url: str, api_key: str | None) -> dict[str, Any]:
    """The deployment's GET /info document, through the Python client."""
    with talking_to(f"{url}/info"), Client(url, api_key, timeout=10, retries=0) as client:
        return client.info()
