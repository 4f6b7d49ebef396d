"""`pipeserve serve`: one pipeline served in the foreground, until a signal ends it.

The server process itself (uvicorn, signals, exit) is `service.cli.server`'s.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from service.auth import generate_key, hash_key, hash_setting
from service.cli.errors import InputError, note
from service.cli.options import build_settings, settings_options
from service.sdk.loader import load_pipeline

# Settings that `serve` takes as its own arguments or options, not generated ones.
_SERVE_OWN = {"pipeline"}


@click.command(context_settings={"max_content_width": 100})
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
        raise InputError("no pipeline: give MODULE:PIPELINE, or set PIPESERVE_PIPELINE")
    pipeline = load_pipeline(settings.pipeline)
    if generate_auth_key:
        key = generate_key()
        hashes = hash_setting([("generated", hash_key(key))], settings.auth_key_hashes)
        settings = build_settings({**settings.model_dump(), "auth_key_hashes": hashes})
        # The key alone on stdout, so that a script can capture it; it is never logged.
        click.echo(key)
        sys.stdout.flush()
        note("auth key generated; it is shown only once")
    from service.cli.server import run_server  # uvicorn and the app: only to serve

    run_server(settings, pipeline)
