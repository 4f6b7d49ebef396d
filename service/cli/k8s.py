"""`pipeserve k8s render`: the Kubernetes manifests of a pipeline server, as YAML or files.

The objects are `service.deployments.k8s`'s; this module checks the options into
`K8sOptions`, adds the key hashes, and writes the result out.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import click

from service.auth import KeyFile, generate_key, hash_key, hash_setting
from service.cli.errors import note
from service.cli.options import build_settings, settings_options
from service.deployments.k8s import K8sOptions
from service.deployments.k8s import render as render_manifests
from service.deployments.k8s import stale_files as stale_manifests
from service.deployments.k8s import to_yaml as manifests_yaml
from service.deployments.k8s import write_directory as write_manifests
from service.sdk.loader import load_pipeline

# Settings the manifests fix themselves (the container's address, port and home; the keys,
# which go in a Secret) or take as their own options.
_K8S_OWN = {
    "pipeline", "name", "host", "port", "home", "auth_keys_file", "auth_key_hashes",
    # Secrets: from the user's own Secrets (--database-url-secret, --webhook-secret-secret).
    "database_url", "webhook_secret",
}  # fmt: skip
_MANIFEST_FIELDS = {f.name for f in dataclasses.fields(K8sOptions)}


@click.group()
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
    given = {k: v for k, v in options.items() if k not in _MANIFEST_FIELDS and v is not None}
    validated = build_settings(given)
    hashes = [] if keys_from is None else [(r.name, r.hash) for r in KeyFile(keys_from).load()]
    key = generate_key() if generate_auth_key else None
    if key is not None:
        hashes.append(("generated", hash_key(key)))
    k8s_options = K8sOptions(
        pipeline=spec,
        settings={k: getattr(validated, k) for k in given},
        auth_key_hashes=hash_setting(hashes),
        **{k: v for k, v in options.items() if k in _MANIFEST_FIELDS},
    )
    # After the options are checked: importing the module may take a while.
    pipeline = load_pipeline(spec)
    k8s_options = dataclasses.replace(k8s_options, pipeline_name=pipeline.name)
    if k8s_options.database_url_secret is None and (
        k8s_options.replicas > 1 or k8s_options.max_replicas is not None
    ):
        note(
            "warning: without --database-url-secret each pod keeps its runs in its own "
            "SQLite file: a run submitted to one pod is not visible through the others"
        )
    _write(render_manifests(k8s_options), output)
    if key is not None:
        note("auth key generated; it is shown only once, and only its hash is in the Secret:")
        click.echo(key, err=True)


def _write(objects: list[dict[str, Any]], output: Path | None) -> None:
    """The manifests on stdout, or as files in `output` (saying which are left over)."""
    if output is None:
        click.echo(manifests_yaml(objects), nl=False)
        return
    written = write_manifests(objects, output)
    note(f"wrote {', '.join(p.name for p in written)} to {output}")
    for path in stale_manifests(output, written):
        note(f"{path} is from an earlier render and no longer listed: remove it")
