"""Local deployments: `pipeserve serve` as detached background processes, with a record each.

A deployment is a `pipeserve serve` process started in a session of its own, so that one
signal to its process group reaches the server and any uvicorn workers, and a JSON record
in `<home>/deployments/<name>.json`. The record keeps the process's create time beside its
pid: a pid the system has since given to another process reads as `stale`, never as ours.
A key generated at deploy lives only in `<name>.key` (mode 0600); the server gets its hash.
Secret settings (the webhook secret) live only in `<name>.secrets` (mode 0600); the record
shows them masked.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import typing
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Literal

import httpx
import psutil
from pydantic import SecretStr

from service.auth import generate_key, hash_key, hash_setting
from service.client import Client, PipeserveError
from service.files import NAME, locked, write_private
from service.settings import Settings, settings_env

Status = Literal["running", "stopped", "stale"]

SECRET_SETTINGS = frozenset(
    name
    for name, field in Settings.model_fields.items()
    if SecretStr in (field.annotation, *typing.get_args(field.annotation))
)
# What the record, `describe` and `--json` show for a secret setting.
MASK = "***"

# The margin on top of the server's own drain and grace before SIGKILL.
_STOP_MARGIN = 5.0
# How often a free port may be taken by another process between our pick and the bind.
_PORT_TRIES = 3


class DeploymentError(Exception):
    """A deployment command cannot be done; the message is for the user."""


@dataclass
class DeploymentRecord:
    name: str
    pipeline: str
    host: str
    port: int
    port_fixed: bool
    url: str
    log_file: str
    cwd: str
    pid: int | None = None
    # psutil's create time of `pid`: tells our process from a later one given the same pid.
    process_created: float | None = None
    started_at: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    auth_key_file: str | None = None

    @classmethod
    def from_json(cls, text: str) -> DeploymentRecord:
        data = json.loads(text)
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @property
    def stop_timeout(self) -> float:
        """How long the server's own graceful shutdown may take, from its settings."""
        delay = float(self.settings.get("shutdown_delay", 0))
        grace = float(self.settings.get("grace_period", 30))
        return delay + grace + _STOP_MARGIN

    def api_key(self) -> str | None:
        if self.auth_key_file is None:
            return None
        try:
            return Path(self.auth_key_file).read_text().strip() or None
        except FileNotFoundError:
            raise DeploymentError(
                f"the auth key of deployment '{self.name}' is gone ({self.auth_key_file}): "
                "redeploy it with --update --generate-auth-key"
            ) from None


class DeploymentStore:
    """The records, logs and keys of local deployments, under `<home>/deployments`."""

    def __init__(self, home: str | Path) -> None:
        self.dir = Path(home) / "deployments"

    def _file(self, name: str, suffix: str) -> Path:
        if not NAME.match(name):
            raise DeploymentError(
                f"'{name}' is not a deployment name: use up to 64 letters, digits, '.', '_', '-'"
            )
        return self.dir / f"{name}{suffix}"

    def record_path(self, name: str) -> Path:
        return self._file(name, ".json")

    def log_path(self, name: str) -> Path:
        return self._file(name, ".log")

    def key_path(self, name: str) -> Path:
        return self._file(name, ".key")

    def secrets_path(self, name: str) -> Path:
        return self._file(name, ".secrets")

    def secrets(self, name: str) -> dict[str, str]:
        """The secret settings kept for deployment `name` (none if the file is gone)."""
        try:
            secrets: dict[str, str] = json.loads(self.secrets_path(name).read_text())
        except FileNotFoundError:
            return {}
        return secrets

    def save_secrets(self, name: str, settings: dict[str, Any]) -> dict[str, Any]:
        """Keep the secrets of `settings` in `<name>.secrets`; `settings` with them masked."""
        secrets = {k: v for k, v in settings.items() if k in SECRET_SETTINGS}
        if secrets:
            write_private(self.secrets_path(name), json.dumps(secrets) + "\n")
        else:
            self.secrets_path(name).unlink(missing_ok=True)
        return {k: MASK if k in secrets else v for k, v in settings.items()}

    def lock(self, name: str) -> contextlib.AbstractContextManager[None]:
        """Serialise commands on one deployment (two `deploy --update` at once, say)."""
        path = self._file(name, ".lock")
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return locked(path)

    def get(self, name: str) -> DeploymentRecord | None:
        path = self.record_path(name)
        try:
            return DeploymentRecord.from_json(path.read_text())
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as exc:
            raise DeploymentError(f"the record {path} is damaged: {exc}") from exc

    def load(self, name: str) -> DeploymentRecord:
        record = self.get(name)
        if record is None:
            raise DeploymentError(f"no deployment named '{name}' (see `pipeserve deployment list`)")
        return record

    def all(self) -> list[DeploymentRecord]:
        if not self.dir.is_dir():
            return []
        names = sorted(p.stem for p in self.dir.glob("*.json") if NAME.match(p.stem))
        return [r for name in names if (r := self.get(name)) is not None]

    def save(self, record: DeploymentRecord) -> None:
        write_private(self.record_path(record.name), record.to_json())

    def remove(self, name: str) -> None:
        for suffix in (".json", ".log", ".key", ".secrets", ".lock"):
            self._file(name, suffix).unlink(missing_ok=True)


# -- processes ------------------------------------------------------------------------


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


def tail_offset(f: BinaryIO, end: int, lines: int, start: int = 0) -> int:
    """Where the last `lines` lines before byte `end` begin (not before `start`)."""
    if lines <= 0:
        return end
    position, newlines = end, 0
    f.seek(max(start, end - 1))
    # A last line without its newline counts as a line too.
    wanted = lines + 1 if f.read(1) == b"\n" else lines
    while position > start:
        step = min(65536, position - start)
        position -= step
        f.seek(position)
        block = f.read(step)
        newlines += block.count(b"\n")
        if newlines >= wanted:
            cut = position
            for _ in range(newlines - wanted + 1):
                cut = position + block.index(b"\n", cut - position) + 1
            return cut
    return start


def log_tail(path: Path, lines: int, start: int = 0) -> list[str]:
    """The last `lines` lines of the file at `path`, from byte `start` on."""
    try:
        with path.open("rb") as f:
            end = f.seek(0, os.SEEK_END)
            f.seek(tail_offset(f, end, lines, start))
            data = f.read(end - f.tell())
    except FileNotFoundError:
        return []
    return data.decode(errors="replace").splitlines()


def read_log(log: BinaryIO, tail: int | None = None) -> Iterator[str]:
    """The log as it is now (its last `tail` lines), as text in pieces; `log` ends at its end."""
    end = log.seek(0, os.SEEK_END)
    log.seek(0 if tail is None else tail_offset(log, end, tail))
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    while log.tell() < end:
        chunk = log.read(min(65536, end - log.tell()))
        yield decoder.decode(chunk, final=log.tell() >= end)


def follow_log(log: BinaryIO, running: Callable[[], bool]) -> Iterator[str]:
    """The lines appended to the log from where it is, until `running()` turns false."""
    partial = b""
    checked = time.monotonic()
    while True:
        chunk = log.read()
        if chunk:
            partial += chunk
            *lines, partial = partial.split(b"\n")
            yield from (line.decode(errors="replace") for line in lines)
            continue
        # The record is read once a second, not on every poll of the file.
        if time.monotonic() - checked > 1:
            checked = time.monotonic()
            if not running():
                break
        time.sleep(0.2)
    if partial:
        yield partial.decode(errors="replace")


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


class StartFailed(DeploymentError):
    """The server process exited or never became ready; `log` has its last lines."""

    def __init__(self, message: str, log: list[str], port_taken: bool = False) -> None:
        super().__init__(message)
        self.log = log
        self.port_taken = port_taken


@dataclass
class DeployResult:
    record: DeploymentRecord
    api_key: str | None = None
    replaced_pid: int | None = None


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
        proc = find_process(old) if old else None
        running = (old, proc) if old is not None and proc is not None else None
        if running is not None and not update:
            raise DeploymentError(
                f"deployment '{name}' is running at {running[0].url} (pid {running[1].pid}): "
                "pass --update to replace it, or deprovision it first"
            )
        if old is not None and old.pid is not None and running is None:
            self.notify(f"deployment '{name}': pid {old.pid} is gone; replacing the stale record")
        if update and running is None:
            self.notify(f"deployment '{name}' is not running: deploying it")
        if update and old is not None:
            # An update changes the code; what the user set before stays unless set again.
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
        host = str(settings.get("host") or "127.0.0.1")

        key, key_hash = None, None
        if generate_auth_key:
            key = generate_key()
            key_hash = hash_key(key)
        elif update and old is not None and old.auth_key_file is not None:
            kept = old.api_key()
            key_hash = hash_key(kept) if kept else None
        env = self._server_env(name, settings, key_hash)

        if running is not None and port:
            old_record, old_proc = running
            self.notify(
                f"port {port} is fixed: stopping the old process (pid {old_proc.pid}) before "
                "starting the new one; the deployment is down meanwhile"
            )
            stop_process(old_proc, old_record.stop_timeout)
            old_record.pid, old_record.process_created = None, None
            self.store.save(old_record)
            running = None
        record = self._start(name, spec, host, port, env, settings)
        record.settings = self.store.save_secrets(name, settings)
        if key is not None:
            write_private(self.store.key_path(name), key + "\n")
        if key_hash is not None:
            record.auth_key_file = str(self.store.key_path(name))
        else:
            self.store.key_path(name).unlink(missing_ok=True)
        self.store.save(record)
        replaced = proc.pid if proc is not None else None
        if running is not None:
            # The new process serves (and is recorded) before the old one goes.
            old_record, old_proc = running
            self.notify(
                f"new process (pid {record.pid}) ready at {record.url}; "
                f"stopping the old one (pid {old_proc.pid})"
            )
            stop_process(old_proc, old_record.stop_timeout)
        return DeployResult(record, key, replaced)

    def _server_env(
        self, name: str, settings: dict[str, Any], key_hash: str | None
    ) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIPESERVE_")}
        env.update(settings_env(settings))
        env["PIPESERVE_NAME"] = name
        env["PIPESERVE_HOME"] = str(self.store.dir.parent)
        if key_hash is not None:
            given = env.get("PIPESERVE_AUTH_KEY_HASHES", "")
            env["PIPESERVE_AUTH_KEY_HASHES"] = hash_setting([("deployment", key_hash)], given)
        # Logs reach the file line by line, as `logs -f` expects.
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _start(
        self,
        name: str,
        spec: str,
        host: str,
        port: int | None,
        env: dict[str, str],
        settings: dict[str, Any],
    ) -> DeploymentRecord:
        tries = 1 if port else _PORT_TRIES
        for attempt in range(1, tries + 1):
            chosen = port or free_port(host)
            try:
                return self._start_once(name, spec, host, chosen, bool(port), env, settings)
            except StartFailed as exc:
                if not exc.port_taken or attempt == tries:
                    raise
                self.notify(f"port {chosen} was taken meanwhile; trying another")
        raise AssertionError("unreachable")

    def _start_once(
        self,
        name: str,
        spec: str,
        host: str,
        port: int,
        port_fixed: bool,
        env: dict[str, str],
        settings: dict[str, Any],
    ) -> DeploymentRecord:
        log_path = self.store.log_path(name)
        log_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        env = {**env, "PIPESERVE_HOST": host, "PIPESERVE_PORT": str(port)}
        command = [self.python, "-P", "-m", "service", "serve", spec]
        with log_path.open("ab") as log:
            offset = log.tell()
            # A session of its own: the server outlives this command, ignores the terminal's
            # Ctrl-C, and one killpg reaches all its processes.
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        url = url_for(host, port)
        try:
            self._wait_ready(proc, url, log_path, offset)
        except BaseException:
            with contextlib.suppress(psutil.NoSuchProcess):
                stop_process(psutil.Process(proc.pid), 10)
            proc.wait()
            raise
        return DeploymentRecord(
            name=name,
            pipeline=spec,
            host=host,
            port=port,
            port_fixed=port_fixed,
            url=url,
            log_file=str(log_path),
            cwd=os.getcwd(),
            pid=proc.pid,
            process_created=psutil.Process(proc.pid).create_time(),
            started_at=datetime.now(UTC).isoformat(),
            settings=settings,
        )

    def _wait_ready(
        self, proc: subprocess.Popen[bytes], url: str, log_path: Path, offset: int
    ) -> None:
        deadline = time.monotonic() + self.ready_timeout
        with httpx.Client(timeout=2, trust_env=False) as http:
            while True:
                code = proc.poll()
                if code is not None:
                    tail = log_tail(log_path, 30, offset)
                    taken = any("address already in use" in line.lower() for line in tail)
                    raise StartFailed(
                        f"the server exited with code {code} before it was ready", tail, taken
                    )
                with contextlib.suppress(httpx.TransportError):
                    if http.get(url + "/ready").status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise StartFailed(
                        f"the server was not ready at {url}/ready within "
                        f"{self.ready_timeout:g} s; stopped it",
                        log_tail(log_path, 30, offset),
                    )
                time.sleep(0.1)

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


# -- talking to a deployment ----------------------------------------------------------


def fetch_info(url: str, api_key: str | None) -> dict[str, Any]:
    """The deployment's GET /info document, through the Python client."""
    try:
        with Client(url, api_key, timeout=10, retries=0) as client:
            return client.info()
    except (httpx.HTTPError, PipeserveError) as exc:
        raise DeploymentError(f"cannot read {url}/info: {exc}") from exc
