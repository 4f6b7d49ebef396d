"""`pipeserve deploy`: a pipeline as a local background server, started or updated.

The deployments themselves (processes, records, logs) are `service.deployments.local`'s;
this module turns options into its calls, and its results into lines.
"""

from __future__ import annotations

from typing import Any

import click
from pydantic import SecretStr

from service.cli.errors import note
from service.cli.options import build_settings, settings_options
from service.deployments.local import Deployer, DeploymentStore

# Settings `deploy` sets itself: NAME and PORT are its options, SPEC its argument; the home
# is where records live, so it is not a setting of the deployment.
_DEPLOY_OWN = {"pipeline", "name", "port"}
_DEPLOY_UNRECORDED = {*_DEPLOY_OWN, "home"}


def deployer(options: dict[str, Any], ready_timeout: float = 120) -> Deployer:
    """The deployer of the home that `--home` (or PIPESERVE_HOME) names."""
    home = build_settings({"home": options.get("home")}).home
    return Deployer(DeploymentStore(home), notify=note, ready_timeout=ready_timeout)


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


@click.command(context_settings={"max_content_width": 100})
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
    result = deployer(options, ready_timeout).deploy(
        spec, name, settings, port, generate_auth_key, update
    )
    record = result.record
    verb = "updated" if result.replaced_pid else "deployed"
    note(f"{verb} '{name}' at {record.url} (pid {record.pid}); logs: {record.log_file}")
    if result.api_key is not None:
        click.echo(result.api_key)
        note(f"auth key generated, kept in {record.auth_key_file}; it is shown only once")
