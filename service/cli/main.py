"""The `pipeserve` command line."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import signal
import socket
import sys
import tempfile
import time
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import httpx
import pydantic
from pydantic import SecretStr

from service.auth import KeyFile, KeyStoreError, generate_key, hash_key, hash_setting
from service.cli.params import ParameterError, describe_type, parse_parameters
from service.client import Client, PipeserveError
from service.deployments.k8s import K8sOptions, ManifestError
from service.deployments.k8s import render as render_manifests
from service.deployments.k8s import stale_files as stale_manifests
from service.deployments.k8s import to_yaml as manifests_yaml
from service.deployments.k8s import write_directory as write_manifests
from service.deployments.local import (
    Deployer,
    DeploymentError,
    DeploymentRecord,
    DeploymentStore,
    StartFailed,
    fetch_info,
    follow_log,
    read_log,
)
from service.deployments.local import status as deployment_status
from service.deployments.local import uptime as deployment_uptime
from service.observe.logs import configure_logging, flush_logs
from service.runs.store import StoreError
from service.sdk.loader import PipelineLoadError, load_pipeline
from service.settings import Settings, describe_error, keys_file, settings_env

logger = logging.getLogger("pipeserve.cli")

# Settings that `serve` takes as its own arguments or options, not generated ones.
_SERVE_OWN = {"pipeline"}


def _fail(message: str, code: int = 2) -> typing.NoReturn:
    flush_logs()  # so that this line comes after the server's own
    click.echo(f"pipeserve: {message}", err=True)
    sys.exit(code)


def settings_options(
    exclude: set[str] = frozenset(),  # type: ignore[assignment]
    include: set[str] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A click option for every setting, so flags and `PIPESERVE_*` variables never drift.

    Options default to None: a flag given wins over the environment, which wins over the
    setting's own default (pydantic-settings does that merge).
    """

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        for name, field in reversed(list(Settings.model_fields.items())):
            if name in exclude or (include is not None and name not in include):
                continue
            flag = "--" + name.replace("_", "-")
            env = f"PIPESERVE_{name.upper()}"
            default = field.default if field.default_factory is None else field.default_factory()  # type: ignore[call-arg]
            help_text = f"{field.description} [env {env}; default {default!r}]"
            annotation = field.annotation
            if annotation is bool:
                option = click.option(f"{flag}/--no-{flag[2:]}", name, default=None, help=help_text)
            else:
                option = click.option(flag, name, default=None, help=help_text)
            func = option(func)
        return func

    return decorate


def build_settings(values: dict[str, Any]) -> Settings:
    given = {k: v for k, v in values.items() if v is not None}
    try:
        return Settings(**given)
    except pydantic.ValidationError as exc:
        _fail(describe_error(exc))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pipeserve", prog_name="pipeserve")
def main() -> None:
    """pipeserve: serve a pipeline of Python steps as an HTTP service."""
    # Pipeline modules are found as `python -m` finds them: the working directory first.
    # pipeserve itself is imported already (and runs with `python -P`), so a user's own
    # `service/` package there cannot shadow it.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


@main.command(context_settings={"max_content_width": 100})
@click.argument("spec", required=False)
@click.option(
    "--generate-auth-key",
    is_flag=True,
    help="Make an auth key valid for this server's life and print it once on stdout.",
)
@settings_options(_SERVE_OWN)
def serve(spec: str | None, generate_auth_key: bool, **options: Any) -> None:
    """Serve the pipeline SPEC (MODULE:PIPELINE, e.g. pipelines.training:training_pipeline).

    POST /invoke runs it and answers its outputs as JSON; GET /info describes it;
    GET /health and /ready are the liveness and readiness probes. Every option can also
    be set with its PIPESERVE_* environment variable; SPEC with PIPESERVE_PIPELINE.
    """
    settings = build_settings({**options, "pipeline": spec})
    if not settings.pipeline:
        _fail("no pipeline: give MODULE:PIPELINE, or set PIPESERVE_PIPELINE")
    try:
        pipeline = load_pipeline(settings.pipeline)
    except PipelineLoadError as exc:
        _fail(str(exc))
    if generate_auth_key:
        key = generate_key()
        hashes = hash_setting([("generated", hash_key(key))], settings.auth_key_hashes)
        settings = build_settings({**settings.model_dump(), "auth_key_hashes": hashes})
        # The key alone on stdout, so that a script can capture it; it is never logged.
        click.echo(key)
        sys.stdout.flush()
        click.echo("pipeserve: auth key generated; it is shown only once", err=True)
    run_server(settings, pipeline)


def connection_protocol(settings: Settings) -> Callable[..., Any]:
    """uvicorn's httptools protocol with the header timeout and the connection limit; a
    partial of a frozen dataclass, so it pickles into `--workers` processes."""
    from service.server.connections import (
        ConnectionLimits,
        GuardedHttpToolsProtocol,
        default_max_connections,
    )

    limits = ConnectionLimits(
        header_timeout=settings.header_timeout,
        max_connections=settings.max_connections or default_max_connections(),
    )
    return functools.partial(GuardedHttpToolsProtocol, limits=limits)


def run_server(settings: Settings, pipeline: Any) -> None:
    import uvicorn

    configure_logging(settings.log_level, settings.log_format)
    common: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "log_config": None,
        "access_log": False,
        "lifespan": "on",
        "timeout_graceful_shutdown": settings.grace_period,
        "timeout_keep_alive": settings.keep_alive_timeout,
        "http": connection_protocol(settings),
    }
    if settings.workers > 1:
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            # A fresh directory: stale files of an earlier run would add to the counts.
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="pipeserve-metrics-")
        # Each worker process builds its own app from the environment.
        os.environ.update(settings_env(settings.model_dump()))
        uvicorn.run(
            "service.server.app:app_from_env", factory=True, workers=settings.workers, **common
        )
        return

    from service.server.app import create_app
    from service.server.connections import close_listeners

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            with super().capture_signals():
                yield
                # SIGTERM is how orchestrators stop a pod: after the graceful shutdown the
                # process exits 0 instead of uvicorn raising the signal again.
                self._captured_signals = [s for s in self._captured_signals if s != signal.SIGTERM]

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            # As uvicorn makes the protocol of each connection it accepts.
            protocol_class: Any = self.config.http_protocol_class
            protocol = functools.partial(
                protocol_class,
                config=self.config,
                server_state=self.server_state,
                app_state=self.lifespan.state,
            )
            await close_listeners(self.servers, protocol)
            await super().shutdown(sockets)

    app = create_app(pipeline, settings)
    server = Server(uvicorn.Config(app, **common))
    code: Any = 0
    try:
        server.run()
        error = app.state.service.init_error
        if isinstance(error, StoreError):
            _fail(f"cannot open the run store: {error}", code=1)
        if error is not None:
            _fail(f"on_init failed: {error!r}", code=1)
        if not server.started:
            sys.exit(1)
    except SystemExit as exc:
        code = exc.code
        raise
    finally:
        _exit_past_abandoned_threads(code)


def _exit_past_abandoned_threads(code: Any) -> None:
    """Exit now if threads of ours still run: a sync step the grace period abandoned
    cannot be stopped, and the interpreter would wait for it at exit (the pool's threads
    are joined), past any grace period an orchestrator allows."""
    import threading

    give_up = time.monotonic() + 0.5  # idle pool threads end in a moment
    lingering = []
    for thread in threading.enumerate():
        if thread.name.startswith("pipeserve-") and not thread.daemon:
            thread.join(max(0.0, give_up - time.monotonic()))
            if thread.is_alive():
                lingering.append(thread.name)
    if not lingering:
        return
    logger.warning(
        "exiting with threads still running (abandoned sync steps)",
        extra={"threads": len(lingering)},
    )
    flush_logs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else 1)


@main.group()
def keys() -> None:
    """Auth keys: while one exists, every route but /health and /ready needs one."""


_KEY_OPTIONS = {"home", "auth_keys_file"}


def _key_file(options: dict[str, Any]) -> KeyFile:
    return KeyFile(keys_file(build_settings(options)))


@keys.command("create")
@click.option("--name", default=None, help="A name to list and revoke the key by.")
@settings_options(include=_KEY_OPTIONS)
def keys_create(name: str | None, **options: Any) -> None:
    """Make a key; print it once, alone on stdout. Only its hash is stored."""
    file = _key_file(options)
    try:
        key, record = file.create(name)
    except KeyStoreError as exc:
        _fail(str(exc))
    click.echo(key)
    click.echo(
        f"pipeserve: key '{record.name}' created in {file.path}; it is shown only once", err=True
    )


@keys.command("list")
@settings_options(include=_KEY_OPTIONS)
def keys_list(**options: Any) -> None:
    """List the keys' names and creation times (never the keys)."""
    try:
        records = _key_file(options).load()
    except KeyStoreError as exc:
        _fail(str(exc))
    for record in records:
        click.echo(f"{record.name}\t{record.created_at}")


@keys.command("revoke")
@click.argument("name")
@settings_options(include=_KEY_OPTIONS)
def keys_revoke(name: str, **options: Any) -> None:
    """Revoke the key NAME; running servers stop accepting it within a second or two."""
    file = _key_file(options)
    try:
        file.revoke(name)
        left = file.load()
    except KeyStoreError as exc:
        _fail(str(exc))
    click.echo(f"pipeserve: key '{name}' revoked", err=True)
    if not left:
        click.echo(
            f"pipeserve: warning: no key is left in {file.path}: servers using it now refuse "
            "every request until a key is made (`pipeserve keys create`); to turn auth off, "
            "delete the file or serve with --auth off",
            err=True,
        )


# -- local deployments ------------------------------------------------------------------

# Settings `deploy` sets itself: NAME and PORT are its options, SPEC its argument; the home
# is where records live, so it is not a setting of the deployment.
_DEPLOY_OWN = {"pipeline", "name", "port"}
_DEPLOY_UNRECORDED = {*_DEPLOY_OWN, "home"}
_HOME = {"home"}


def _notify(message: str) -> None:
    click.echo(f"pipeserve: {message}", err=True)


def _deployer(options: dict[str, Any], ready_timeout: float = 120) -> Deployer:
    home = build_settings({"home": options.get("home")}).home
    return Deployer(DeploymentStore(home), notify=_notify, ready_timeout=ready_timeout)


@contextlib.contextmanager
def _deployment_errors() -> Iterator[None]:
    try:
        yield
    except StartFailed as exc:
        for line in exc.log:
            click.echo(line, err=True)
        _fail(str(exc), code=1)
    except DeploymentError as exc:
        _fail(str(exc), code=1)


def _deploy_settings(options: dict[str, Any]) -> dict[str, Any]:
    """The settings the deployment runs with: `PIPESERVE_*` variables set now, then flags;
    plain values, secrets in the clear (the deployer keeps those out of the record).

    They are recorded, so that `--update` and the record do not depend on a later shell.
    """
    validated = build_settings(options)
    # pydantic-settings counts a setting read from the environment as set.
    names = sorted(validated.model_fields_set - _DEPLOY_UNRECORDED)
    values = {name: getattr(validated, name) for name in names}
    return {k: v.get_secret_value() if isinstance(v, SecretStr) else v for k, v in values.items()}


@main.command(context_settings={"max_content_width": 100})
@click.argument("spec")
@click.option("--name", required=True, help="The deployment's name, to manage it by.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Port to listen on; 0 or none: a free one (an update then starts the new process "
    "before stopping the old one).",
)
@click.option(
    "--generate-auth-key",
    is_flag=True,
    help="Make an auth key for the deployment, print it once on stdout; "
    "`deployment invoke` sends it.",
)
@click.option("--update", is_flag=True, help="Replace the running deployment NAME (new code).")
@click.option(
    "--ready-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=120.0,
    show_default=True,
    help="Seconds to wait for /ready before giving up.",
)
@settings_options(_DEPLOY_OWN)
def deploy(
    spec: str,
    name: str,
    port: int | None,
    generate_auth_key: bool,
    update: bool,
    ready_timeout: float,
    **options: Any,
) -> None:
    """Deploy the pipeline SPEC (MODULE:PIPELINE) locally as a background server NAME.

    Waits until it is ready, then records it under the home; manage it with
    `pipeserve deployment ...`. Server settings are the flags below, or PIPESERVE_* variables.
    """
    settings = _deploy_settings(options)
    deployer = _deployer(options, ready_timeout)
    with _deployment_errors():
        result = deployer.deploy(spec, name, settings, port, generate_auth_key, update)
    record = result.record
    verb = "updated" if result.replaced_pid else "deployed"
    _notify(f"{verb} '{name}' at {record.url} (pid {record.pid}); logs: {record.log_file}")
    if result.api_key is not None:
        click.echo(result.api_key)
        _notify(f"auth key generated, kept in {record.auth_key_file}; it is shown only once")


@main.group()
def deployment() -> None:
    """Local deployments made by `pipeserve deploy`: list, describe, logs, invoke, stop."""


def _uptime(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s"


def _summary(record: DeploymentRecord) -> dict[str, Any]:
    return {
        "name": record.name,
        "status": deployment_status(record),
        "url": record.url,
        "pid": record.pid,
        "uptime": deployment_uptime(record),
        "pipeline": record.pipeline,
    }


@deployment.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON array instead of a table.")
@settings_options(include=_HOME)
def deployment_list(as_json: bool, **options: Any) -> None:
    """List the deployments: name, status (running, stopped, stale), URL, pid, uptime."""
    with _deployment_errors():
        rows = [_summary(r) for r in _deployer(options).store.all()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    _echo_table(
        [["NAME", "STATUS", "URL", "PID", "UPTIME", "PIPELINE"]]
        + [
            [r["name"], r["status"], r["url"], str(r["pid"] or "-"), _uptime(r["uptime"]),
             r["pipeline"]]
            for r in rows
        ]
    )  # fmt: skip


def _echo_table(rows: list[list[str]], indent: str = "") -> None:
    if not rows:
        return
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = (cell.ljust(w) for cell, w in zip(row, widths, strict=True))
        click.echo((indent + "  ".join(cells)).rstrip())


@deployment.command("describe")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of text.")
@settings_options(include=_HOME)
def deployment_describe(name: str, as_json: bool, **options: Any) -> None:
    """Describe deployment NAME: URL, status, pid, uptime, pipeline and its parameters."""
    with _deployment_errors():
        record = _deployer(options).store.load(name)
        summary = _summary(record)
        info = None
        if summary["status"] == "running":
            info = fetch_info(record.url, record.api_key())
    if as_json:
        document = {**summary, "record": dataclasses.asdict(record), "info": info}
        click.echo(json.dumps(document, indent=2))
        return
    lines = [
        ("name", record.name),
        ("status", summary["status"]),
        ("url", record.url),
        ("pid", str(record.pid or "-")),
        ("uptime", _uptime(summary["uptime"])),
        ("pipeline", record.pipeline),
        # The server imports MODULE from here: the first thing to check when it is not found.
        ("directory", record.cwd),
    ]
    if info is not None:
        lines.append(("version", f"{info['pipeline_name']} {info['version']}"))
    lines += [
        ("started", record.started_at or "-"),
        ("log file", record.log_file),
        ("auth key", record.auth_key_file or "none"),
        ("settings", ", ".join(f"{k}={v}" for k, v in sorted(record.settings.items())) or "-"),
    ]
    for label, value in lines:
        click.echo(f"{label + ':':<11} {value}")
    if info is None:
        click.echo(f"{'parameters:':<11} (not running)")
        return
    schema = info["parameters_schema"]
    required = set(schema.get("required", []))
    rows = [
        [
            param,
            describe_type(prop, schema.get("$defs", {})),
            "required" if param in required else f"default {json.dumps(prop.get('default'))}",
        ]
        for param, prop in schema.get("properties", {}).items()
    ]
    click.echo("parameters:" if rows else "parameters: none")
    _echo_table(rows, indent="  ")


@deployment.command("logs")
@click.argument("name")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines while it runs.")
@click.option("--tail", type=click.IntRange(min=0), default=None, help="Only the last N lines.")
@settings_options(include=_HOME)
def deployment_logs(name: str, follow: bool, tail: int | None, **options: Any) -> None:
    """Print the log of deployment NAME (the server's stdout and stderr)."""
    with _deployment_errors():
        store = _deployer(options).store
        record = store.load(name)
        try:
            log = Path(record.log_file).open("rb")
        except FileNotFoundError:
            raise DeploymentError(f"the log file {record.log_file} is gone") from None
    with log:
        for text in read_log(log, tail):
            click.echo(text, nl=False)
        if follow:

            def running() -> bool:
                return deployment_status(store.load(name)) == "running"

            with contextlib.suppress(KeyboardInterrupt):
                for line in follow_log(log, running):
                    click.echo(line)


@deployment.command(
    "invoke",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.argument("name")
@click.argument("parameters", nargs=-1, type=click.UNPROCESSED)
@settings_options(include=_HOME)
def deployment_invoke(name: str, parameters: tuple[str, ...], **options: Any) -> None:
    """Invoke deployment NAME with pipeline parameters: --param=value ...

    Values are typed by the pipeline's parameter schema: strings as written, anything else
    as JSON (3, 0.5, true, '[1, 2]', '{"a": 1}'). Prints the JSON answer; exits 1 on a failure.
    A parameter named like an option of this command (--home) goes after `--`.
    """
    with _deployment_errors():
        record = _deployer(options).store.load(name)
        state = deployment_status(record)
        if state != "running":
            raise DeploymentError(f"deployment '{name}' is {state}: deploy it again")
        timeout = float(record.settings.get("max_timeout") or 3600) + 10
        failure: PipeserveError | None = None
        try:
            with Client(record.url, record.api_key(), timeout=timeout) as client:
                values = parse_parameters(list(parameters), client.info()["parameters_schema"])
                try:
                    answer = client.invoke(values).body
                except PipeserveError as exc:
                    failure, answer = exc, exc.body
        except ParameterError as exc:
            _fail(str(exc))
        except PipeserveError as exc:  # /info refused (a key, say)
            _fail(f"cannot read deployment '{name}': {exc}", code=1)
        except httpx.HTTPError as exc:
            raise DeploymentError(
                f"cannot reach deployment '{name}' at {record.url}: {exc}"
            ) from exc
    click.echo(json.dumps(answer, indent=2))
    if failure is not None:
        _fail(f"invoke failed: {failure}", code=1)


def _stopped_message(name: str, before: str, clean: bool) -> str:
    if before == "running":
        how = "stopped" if clean else "killed (it outlived its grace period)"
        return f"deployment '{name}' {how}"
    if before == "stale":
        return f"deployment '{name}' was stale (its process was gone); record cleaned up"
    return f"deployment '{name}' was not running"


_STOP_TIMEOUT = click.option(
    "--timeout",
    "stop_timeout",
    type=click.FloatRange(min=0),
    default=None,
    help="Seconds between SIGTERM and SIGKILL (default: the server's shutdown delay + grace "
    "period + 5).",
)


@deployment.command("deprovision")
@click.argument("name")
@_STOP_TIMEOUT
@settings_options(include=_HOME)
def deployment_deprovision(name: str, stop_timeout: float | None, **options: Any) -> None:
    """Stop deployment NAME (SIGTERM, then SIGKILL after the timeout); keep its record."""
    with _deployment_errors():
        before, clean = _deployer(options).deprovision(name, stop_timeout)
    _notify(_stopped_message(name, before, clean))


@deployment.command("delete")
@click.argument("name")
@_STOP_TIMEOUT
@settings_options(include=_HOME)
def deployment_delete(name: str, stop_timeout: float | None, **options: Any) -> None:
    """Stop deployment NAME if it runs, then remove its record, log and key."""
    with _deployment_errors():
        before, clean = _deployer(options).delete(name, stop_timeout)
    _notify(_stopped_message(name, before, clean) + "; deleted")


# -- Kubernetes ---------------------------------------------------------------------------

# Settings the manifests fix themselves (the container's address, port and home; the keys,
# which go in a Secret) or take as their own options.
_K8S_OWN = {
    "pipeline", "name", "host", "port", "home", "auth_keys_file", "auth_key_hashes",
    # Secrets: from the user's own Secrets (--database-url-secret, --webhook-secret-secret).
    "database_url", "webhook_secret",
}  # fmt: skip


@main.group()
def k8s() -> None:
    """Kubernetes manifests for a pipeline server, to keep in git and apply with kubectl."""


@k8s.command("render", context_settings={"max_content_width": 100})
@click.argument("spec")
@click.option("--name", required=True, help="Name of the objects (a DNS label).")
@click.option("--image", required=True, help="The server's image, e.g. ghcr.io/you/app:1.0.")
@click.option("--namespace", default=None, help="Namespace of the objects (default: none set).")
@click.option("--replicas", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--min-replicas", type=click.IntRange(min=1), default=None, help="Autoscaling.")
@click.option(
    "--max-replicas",
    type=click.IntRange(min=1),
    default=None,
    help="Autoscale between --min-replicas (default --replicas) and this (an HPA).",
)
@click.option(
    "--target-cpu",
    type=click.IntRange(min=1),
    default=70,
    show_default=True,
    help="CPU use the autoscaler aims at, in % of the request.",
)
@click.option("--cpu", default="250m", show_default=True, help="CPU request.")
@click.option("--cpu-limit", default=None, help="CPU limit (default: none, no throttling).")
@click.option("--memory", default="512Mi", show_default=True, help="Memory request and limit.")
@click.option("--ingress-host", default=None, help="Serve on this host name (an Ingress).")
@click.option("--ingress-class", default=None, help="The Ingress's ingressClassName.")
@click.option("--tls-secret", default=None, help="TLS Secret for the Ingress host.")
@click.option(
    "--database-url-secret",
    default=None,
    metavar="SECRET[:KEY]",
    help="Existing Secret holding PIPESERVE_DATABASE_URL (key default: database-url); "
    "without it each pod keeps its runs in its own SQLite file.",
)
@click.option(
    "--webhook-secret-secret",
    default=None,
    metavar="SECRET[:KEY]",
    help="Existing Secret holding PIPESERVE_WEBHOOK_SECRET (key default: webhook-secret).",
)
@click.option(
    "--startup-timeout",
    type=click.IntRange(min=1),
    default=300,
    show_default=True,
    help="Seconds on_init may take before the pod is restarted.",
)
@click.option(
    "--generate-auth-key",
    is_flag=True,
    help="Make an auth key, print it once on stderr; only its hash goes in the Secret.",
)
@click.option(
    "--auth-keys-file",
    "keys_from",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Put the key hashes of this file (`pipeserve keys create --auth-keys-file`) in the "
    "Secret.",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write one file per object and a kustomization.yaml here (default: YAML on stdout).",
)
@settings_options(_K8S_OWN)
def k8s_render(
    spec: str,
    generate_auth_key: bool,
    keys_from: Path | None,
    output: Path | None,
    **options: Any,
) -> None:
    """Render the Kubernetes manifests that serve the pipeline SPEC (MODULE:PIPELINE).

    Deployment, Service, PodDisruptionBudget, ConfigMap (the settings below, as PIPESERVE_*
    variables), Secret (auth key hashes), and with their options an HPA and an Ingress.
    The output depends only on the options, so it can be kept in git and rendered again.
    Unlike `serve`, --shutdown-delay is 5 s unless given: time for a terminating pod to
    leave the Service's endpoints.
    """
    manifest_fields = {f.name for f in dataclasses.fields(K8sOptions)}
    given = {k: v for k, v in options.items() if k not in manifest_fields and v is not None}
    validated = build_settings(given)
    hashes = []
    if keys_from is not None:
        try:
            hashes += [(r.name, r.hash) for r in KeyFile(keys_from).load()]
        except KeyStoreError as exc:
            _fail(str(exc))
    key = generate_key() if generate_auth_key else None
    if key is not None:
        hashes.append(("generated", hash_key(key)))
    try:
        k8s_options = K8sOptions(
            pipeline=spec,
            settings={k: getattr(validated, k) for k in given},
            auth_key_hashes=hash_setting(hashes),
            **{k: v for k, v in options.items() if k in manifest_fields},
        )
    except ManifestError as exc:
        _fail(str(exc))
    # After the options are checked: importing the module may take a while.
    try:
        pipeline = load_pipeline(spec)
    except PipelineLoadError as exc:
        _fail(str(exc))
    k8s_options = dataclasses.replace(k8s_options, pipeline_name=pipeline.name)
    if k8s_options.database_url_secret is None and (
        k8s_options.replicas > 1 or k8s_options.max_replicas is not None
    ):
        _notify(
            "warning: without --database-url-secret each pod keeps its runs in its own "
            "SQLite file: a run submitted to one pod is not visible through the others"
        )
    objects = render_manifests(k8s_options)
    if output is None:
        click.echo(manifests_yaml(objects), nl=False)
    else:
        written = write_manifests(objects, output)
        _notify(f"wrote {', '.join(p.name for p in written)} to {output}")
        for path in stale_manifests(output, written):
            _notify(f"{path} is from an earlier render and no longer listed: remove it")
    if key is not None:
        _notify("auth key generated; it is shown only once, and only its hash is in the Secret:")
        click.echo(key, err=True)


if __name__ == "__main__":  # pragma: no cover
    main()
