"""`pipeserve deployment ...`: the local deployments `pipeserve deploy` made.

list, describe, logs, invoke, deprovision, delete: each reads the records under the home
and talks to a running server through the Python client.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path
from typing import Any

import click

from service.cli.deploy import deployer
from service.cli.errors import CommandFailed, note
from service.cli.options import settings_options
from service.cli.params import describe_type, parse_parameters
from service.client import APIError, Client
from service.deployments.local import (
    DeploymentError,
    DeploymentRecord,
    fetch_info,
    follow_log,
    read_log,
    talking_to,
)
from service.deployments.local import status as deployment_status
from service.deployments.local import uptime as deployment_uptime

_HOME = {"home"}


@click.group()
def deployment() -> None:
    """Local deployments made by `pipeserve deploy`: list, describe, logs, invoke, retry, stop."""


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


def _echo_table(rows: list[list[str]], indent: str = "") -> None:
    if not rows:
        return
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = (cell.ljust(w) for cell, w in zip(row, widths, strict=True))
        click.echo((indent + "  ".join(cells)).rstrip())


@deployment.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON array instead of a table.")
@settings_options(include=_HOME)
def deployment_list(as_json: bool, **options: Any) -> None:
    """List the deployments: name, status (running, stopped, stale), URL, pid, uptime."""
    rows = [_summary(r) for r in deployer(options).store.all()]
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


@deployment.command("describe")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of text.")
@settings_options(include=_HOME)
def deployment_describe(name: str, as_json: bool, **options: Any) -> None:
    """Describe deployment NAME: URL, status, pid, uptime, pipeline and its parameters."""
    record = deployer(options).store.load(name)
    summary = _summary(record)
    info = None
    if summary["status"] == "running":
        info = fetch_info(record.url, record.api_key())
    if as_json:
        document = {**summary, "record": dataclasses.asdict(record), "info": info}
        click.echo(json.dumps(document, indent=2))
        return
    for label, value in _described(record, summary, info):
        click.echo(f"{label + ':':<11} {value}")
    if info is None:
        click.echo(f"{'parameters:':<11} (not running)")
        return
    rows = _parameter_rows(info["parameters_schema"])
    click.echo("parameters:" if rows else "parameters: none")
    _echo_table(rows, indent="  ")


def _described(
    record: DeploymentRecord, summary: dict[str, Any], info: dict[str, Any] | None
) -> list[tuple[str, str]]:
    """The (label, value) lines of `describe`, before the parameters."""
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
    return lines


def _parameter_rows(schema: dict[str, Any]) -> list[list[str]]:
    """Name, type, and `required` or the default of each of the pipeline's parameters."""
    required = set(schema.get("required", []))
    return [
        [
            param,
            describe_type(prop, schema.get("$defs", {})),
            "required" if param in required else f"default {json.dumps(prop.get('default'))}",
        ]
        for param, prop in schema.get("properties", {}).items()
    ]


@deployment.command("logs")
@click.argument("name")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines while it runs.")
@click.option("--tail", type=click.IntRange(min=0), default=None, help="Only the last N lines.")
@settings_options(include=_HOME)
def deployment_logs(name: str, follow: bool, tail: int | None, **options: Any) -> None:
    """Print the log of deployment NAME (the server's stdout and stderr)."""
    store = deployer(options).store
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
    record = deployer(options).store.load(name)
    state = deployment_status(record)
    if state != "running":
        raise DeploymentError(f"deployment '{name}' is {state}: deploy it again")
    answer, failure = _invoke(name, record, list(parameters))
    click.echo(json.dumps(answer, indent=2))
    if failure is not None:
        raise CommandFailed(f"invoke failed: {failure}")


def _invoke(
    name: str, record: DeploymentRecord, parameters: list[str]
) -> tuple[Any, APIError | None]:
    """The deployment's answer, and the error it is if it is one (its body is shown too)."""
    timeout = float(record.settings.get("max_timeout") or 3600) + 10
    with (
        # /info refused (a key, say), or the server out of reach.
        talking_to(f"deployment '{name}'", f"deployment '{name}' at {record.url}"),
        Client(record.url, record.api_key(), timeout=timeout) as client,
    ):
        values = parse_parameters(parameters, client.info()["parameters_schema"])
        try:
            return client.invoke(values).body, None
        except APIError as exc:
            return exc.body, exc


@deployment.command("retry")
@click.argument("name")
@click.argument("run_id")
@click.option(
    "--from-step",
    default=None,
    help="Run this step and the steps after it again; restore the rest from checkpoints.",
)
@click.option("--wait/--no-wait", default=False, help="Wait for the new run to end.")
@settings_options(include=_HOME)
def deployment_retry(
    name: str, run_id: str, from_step: str | None, wait: bool, **options: Any
) -> None:
    """Run the ended run RUN_ID of deployment NAME again, as a new run.

    The new run restores the outputs of the original's checkpointed steps (all of them, or
    those before --from-step) and runs the others. Prints the new run (its final record
    with --wait; exits 1 if it did not succeed).
    """
    record = deployer(options).store.load(name)
    state = deployment_status(record)
    if state != "running":
        raise DeploymentError(f"deployment '{name}' is {state}: deploy it again")
    with (
        talking_to(f"deployment '{name}'", f"deployment '{name}' at {record.url}"),
        Client(record.url, record.api_key()) as client,
    ):
        handle = client.retry(run_id, from_step=from_step)
        answer = handle.wait() if wait else handle.get()
    click.echo(json.dumps(answer, indent=2))
    if wait and answer.get("status") != "succeeded":
        raise CommandFailed(f"run {handle.run_id} {answer.get('status')}")


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
    before, clean = deployer(options).deprovision(name, stop_timeout)
    note(_stopped_message(name, before, clean))


@deployment.command("delete")
@click.argument("name")
@_STOP_TIMEOUT
@settings_options(include=_HOME)
def deployment_delete(name: str, stop_timeout: float | None, **options: Any) -> None:
    """Stop deployment NAME if it runs, then remove its record, log and key."""
    before, clean = deployer(options).delete(name, stop_timeout)
    note(_stopped_message(name, before, clean) + "; deleted")
