"""Settings: every one from a `PIPESERVE_*` environment variable or a CLI flag."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Optional

import platformdirs
from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """The server's settings; `pipeserve serve --help` and the README list them."""

    model_config = SettingsConfigDict(env_prefix="PIPESERVE_", extra="forbid", frozen=True)

    pipeline: Optional[str] = Field(None, description="The pipeline to serve, as MODULE:ATTRIBUTE.")
    name: Optional[str] = Field(None, description="Deployment name (default: the pipeline's name).")
    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8000, ge=0, le=65535, description="Port to listen on.")
    workers: int = Field(1, ge=1, description="Server processes (uvicorn workers).")
    max_threads: int = Field(
        64, ge=1, description="Worker threads that run sync steps, per process."
    )
    max_concurrency: int = Field(
        64, ge=1, description="Invocations running at once per process; more wait."
    )
    queue_timeout: float = Field(
        5.0, ge=0, description="Seconds an invocation may wait for a slot before a 503."
    )
    timeout: float = Field(
        300.0, gt=0, description="Default deadline of an invocation, in seconds (504 past it)."
    )
    max_timeout: float = Field(
        3600.0, gt=0, description="Largest deadline a request may ask for, in seconds."
    )
    debug: bool = Field(
        False, description="Put tracebacks in error bodies (they are always logged)."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Log level."
    )
    log_format: Literal["json", "console"] = Field(
        "json", description="Log lines as JSON objects or as plain text."
    )
    access_log: bool = Field(True, description="Log one line per request.")
    auth_keys_file: Optional[str] = Field(
        None, description="JSON file of auth key hashes (default: <home>/auth_keys.json)."
    )
    auth_key_hashes: str = Field(
        "",
        description="More valid keys, as comma-separated name:sha256:<hex> (e.g. from a Secret).",
    )
    auth: Literal["auto", "required", "off"] = Field(
        "auto",
        description="auto: auth is on while the keys file exists or a key hash is set; "
        "required: on even with no key (all refused until one is made); off: no auth.",
    )
    metrics_auth: bool = Field(False, description="Require the auth key for /metrics too.")
    max_body_bytes: int = Field(
        1_048_576, ge=1, description="Largest request body in bytes (413 beyond)."
    )
    max_json_depth: int = Field(
        32, ge=1, description="Deepest JSON nesting a request may have (400 beyond)."
    )
    cors_origins: str = Field(
        "", description="Comma-separated origins allowed by CORS ('*' for any); empty: no CORS."
    )
    shutdown_delay: float = Field(
        0.0,
        ge=0,
        description="Seconds after SIGTERM during which /ready and new work answer 503 "
        "while the server still accepts connections.",
    )
    grace_period: float = Field(
        30.0, ge=0, description="Seconds in-flight requests get to finish at shutdown."
    )
    header_timeout: float = Field(
        10.0,
        gt=0,
        description="Seconds a request's head (request line and headers) may take to arrive; "
        "the connection is closed past it.",
    )
    body_timeout: float = Field(
        30.0,
        gt=0,
        description="Seconds to wait for the next chunk of a request body before a 408.",
    )
    keep_alive_timeout: float = Field(
        5.0, gt=0, description="Seconds an idle keep-alive connection stays open."
    )
    max_connections: Optional[int] = Field(
        None,
        ge=1,
        description="Connections held at once per process; past it a new one closes the "
        "oldest idle one (default: the open-file limit less 128).",
    )
    home: str = Field(
        default_factory=lambda: platformdirs.user_data_dir("pipeserve"),
        description="State directory: local deployments, auth keys.",
    )

    # -- runs: the run store, batch runs, webhooks, retention ------------------------
    database_url: Optional[str] = Field(
        None,
        description="The run store: sqlite:///PATH or postgresql://USER:PASSWORD@HOST/DB "
        "(default: a SQLite file under <home>/runs/).",
    )
    record_invocations: bool = Field(
        True, description="Record /invoke runs in the run store (written behind, in batches)."
    )
    run_workers: int = Field(4, ge=1, description="Batch runs executing at once, per process.")
    max_queued_runs: int = Field(
        1000, ge=1, description="Queued batch runs beyond which POST /runs answers 429."
    )
    run_timeout: float = Field(
        3600.0, gt=0, description="Default deadline of a batch run, in seconds."
    )
    run_lease: float = Field(
        30.0,
        ge=1,
        description="Seconds a process's claim on a running run lasts without a heartbeat; "
        "after that, another process takes the run over.",
    )
    poll_interval: float = Field(
        1.0,
        gt=0,
        description="Seconds between looks at the store for queued runs, expired leases "
        "and due webhooks.",
    )
    webhook_secret: Optional[SecretStr] = Field(
        None, description="Secret that signs webhook deliveries (HMAC-SHA256); needed for them."
    )
    webhook_max_attempts: int = Field(
        5, ge=1, description="Delivery attempts of a webhook, with exponential backoff."
    )
    webhook_timeout: float = Field(10.0, gt=0, description="Seconds one webhook attempt may take.")
    retention_days: float = Field(
        30.0, gt=0, description="Finished runs older than this many days are deleted."
    )
    retention_max_runs: int = Field(
        10_000, ge=1, description="At most this many finished runs are kept."
    )
    retention_interval: float = Field(
        60.0, gt=0, description="Seconds between two prunings of finished runs."
    )
    max_recorded_output_bytes: int = Field(
        65_536,
        ge=0,
        description="Outputs larger than this (as JSON) are not kept in the run store.",
    )
    max_checkpoint_bytes: int = Field(
        64 * 1024 * 1024,
        ge=0,
        description="A step whose outputs take more than this is not checkpointed: a resumed "
        "run runs it again.",
    )
    checkpoint_pickle: bool = Field(
        True,
        description="Checkpoint values that have no pickle-free form (JSON, .npy, Parquet) "
        "with pickle. The run store must then be trusted like code: pickle runs what it reads.",
    )
    checkpoint_invocations: bool = Field(
        False,
        description="Checkpoint the steps of /invoke runs too (written behind with their "
        "record), so that POST /runs/{id}/retry restores them; costs each /invoke the encoding "
        "of its steps' outputs.",
    )
    checkpoint_url: Optional[str] = Field(
        None,
        description="A directory or object store URL (fsspec: s3://, gs://, file://) for "
        "checkpoints larger than checkpoint_inline_bytes, instead of the run store's database.",
    )
    checkpoint_inline_bytes: int = Field(
        65_536,
        ge=0,
        description="With checkpoint_url: checkpoints up to this size stay in the database.",
    )

    @field_validator("auth_key_hashes")
    @classmethod
    def _valid_hashes(cls, value: str) -> str:
        from service.auth import parse_hash_setting

        parse_hash_setting(value)
        return value


def keys_file(settings: Settings) -> Path:
    return Path(settings.auth_keys_file or Path(settings.home) / "auth_keys.json")


def describe_error(exc: ValidationError) -> str:
    """One line for a bad setting: which one, what is wrong, and the value given."""
    parts = []
    for err in exc.errors(include_url=False):
        field = ".".join(str(p) for p in err["loc"]) or "settings"
        env = f"PIPESERVE_{field.upper()}"
        parts.append(f"{field} ({env}): {err['msg']} (got {err.get('input')!r})")
    return "invalid setting: " + "; ".join(parts)


def settings_env(values: Mapping[str, Any]) -> dict[str, str]:
    """The `PIPESERVE_*` variables that set these settings (None: left unset), secrets in
    the clear: for a child process's environment."""
    env: dict[str, str] = {}
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, bool):
            value = "true" if value else "false"
        env[f"PIPESERVE_{name.upper()}"] = str(value)
    return env
