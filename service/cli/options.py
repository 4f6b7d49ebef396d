"""Options the commands share: one click option per setting, and the settings they make."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click
import pydantic

from service.cli.errors import InputError
from service.settings import Settings, describe_error


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
    """Settings from option values (None: not given) over the `PIPESERVE_*` variables."""
    given = {k: v for k, v in values.items() if v is not None}
    try:
        return Settings(**given)
    except pydantic.ValidationError as exc:
        raise InputError(describe_error(exc)) from None
