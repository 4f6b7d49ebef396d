"""The `pipeserve` command: the root group, holding the commands of each module.

`serve` (serve.py), `keys` (keys.py), `deploy` (deploy.py), `deployment` (deployment.py),
`k8s` (k8s.py). The group is a `ReportingGroup` (errors.py): a pipeserve error any command
raises ends it with one line and its exit code.
"""

from __future__ import annotations

import click

from service.cli.deploy import deploy
from service.cli.deployment import deployment
from service.cli.errors import ReportingGroup
from service.cli.k8s import k8s
from service.cli.keys import keys
from service.cli.paths import put_cwd_first
from service.cli.serve import serve


@click.group(cls=ReportingGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pipeserve", prog_name="pipeserve")
def main() -> None:
    """pipeserve: serve a pipeline of Python steps as an HTTP service."""
    put_cwd_first()


for _command in (serve, keys, deploy, deployment, k8s):
    main.add_command(_command)
