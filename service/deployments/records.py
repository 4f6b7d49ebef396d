"""What pipeserve keeps of a local deployment: its record, its secrets and its key files.

Everything lives under `<home>/deployments`: `<name>.json` (the record), `<name>.log` (the
server's output), `<name>.key` and `<name>.secrets` (mode 0600), `<name>.lock`. The record
keeps the process's create time beside its pid, so that a pid the system has since given
to another process is never taken for ours (`processes.find_process`).
"""

from __future__ import annotations

import contextlib
import json
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import SecretStr

from service.errors import PipeserveError
from service.files import NAME, locked, write_private
from service.settings import Settings

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


class DeploymentError(PipeserveError):
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
