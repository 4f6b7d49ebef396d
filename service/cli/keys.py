"""`pipeserve keys ...`: the auth keys file (create, list, revoke); only hashes are kept."""

from __future__ import annotations

from typing import Any

import click

from service.auth import KeyFile
from service.cli.errors import note
from service.cli.options import build_settings, settings_options
from service.settings import keys_file

_KEY_OPTIONS = {"home", "auth_keys_file"}


@click.group()
def keys() -> None:
    """Auth keys: while one exists, every route but /health and /ready needs one."""


def _key_file(options: dict[str, Any]) -> KeyFile:
    return KeyFile(keys_file(build_settings(options)))


@keys.command("create")
@click.option("--name", default=None, help="A name to list and revoke the key by.")
@settings_options(include=_KEY_OPTIONS)
def keys_create(name: str | None, **options: Any) -> None:
    """Make a key; print it once, alone on stdout. Only its hash is stored."""
    file = _key_file(options)
    key, record = file.create(name)
    click.echo(key)
    note(f"key '{record.name}' created in {file.path}; it is shown only once")


@keys.command("list")
@settings_options(include=_KEY_OPTIONS)
def keys_list(**options: Any) -> None:
    """List the keys' names and creation times (never the keys)."""
    for record in _key_file(options).load():
        click.echo(f"{record.name}\t{record.created_at}")


@keys.command("revoke")
@click.argument("name")
@settings_options(include=_KEY_OPTIONS)
def keys_revoke(name: str, **options: Any) -> None:
    """Revoke the key NAME; running servers stop accepting it within a second or two."""
    file = _key_file(options)
    file.revoke(name)
    left = file.load()
    note(f"key '{name}' revoked")
    if not left:
        note(
            f"warning: no key is left in {file.path}: servers using it now refuse "
            "every request until a key is made (`pipeserve keys create`); to turn auth off, "
            "delete the file or serve with --auth off"
        )
