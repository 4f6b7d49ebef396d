"""What the command line says on stderr: `pipeserve: <message>` lines, and exit codes.

Commands raise; they do not print their own errors. Every error pipeserve raises derives
from `service.errors.PipeserveError`, and the root group (`ReportingGroup`) turns any of
them that a command lets through into one line and an exit code, here and nowhere else:

    2  what the user gave cannot be used: a spec, a setting, a key name, an option, a
       pipeline parameter (`InputError`, `PipelineLoadError`, `KeyStoreError`,
       `ManifestError`, `ParameterError`);
    1  doing it failed: a deployment, a server, an invocation (any other error).

A `StartFailed` shows the server's last log lines first: they say why it did not start.
"""

from __future__ import annotations

import sys
from typing import Any, NoReturn

import click

from service.auth import KeyStoreError
from service.cli.params import ParameterError
from service.deployments.k8s import ManifestError
from service.deployments.local import StartFailed
from service.errors import PipeserveError
from service.observe.logs import flush_logs
from service.sdk.loader import PipelineLoadError


class InputError(PipeserveError):
    """What was given on the command line cannot be used (no pipeline, a bad setting)."""


class CommandFailed(PipeserveError):
    """The command was carried out, and what it did failed (an invocation's error answer)."""


_INPUT_ERRORS: tuple[type[PipeserveError], ...] = (
    InputError,
    PipelineLoadError,
    KeyStoreError,
    ManifestError,
    ParameterError,
)


def exit_code(error: PipeserveError) -> int:
    return 2 if isinstance(error, _INPUT_ERRORS) else 1


def note(message: str) -> None:
    """One `pipeserve: ...` line on stderr: what a command says beside its output."""
    click.echo(f"pipeserve: {message}", err=True)


def fail(message: str, code: int) -> NoReturn:
    """End the process with `message` on stderr and exit code `code`."""
    flush_logs()  # so that this line comes after the server's own
    note(message)
    sys.exit(code)


def report(error: PipeserveError) -> NoReturn:
    if isinstance(error, StartFailed):
        for line in error.log:
            click.echo(line, err=True)
    fail(str(error), exit_code(error))


class ReportingGroup(click.Group):
    """The root group: a command that raises a PipeserveError ends through `report`."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PipeserveError as error:
            report(error)
