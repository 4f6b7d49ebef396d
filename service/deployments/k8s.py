"""Kubernetes manifests for a pipeline server: plain objects, rendered the same every time.

The objects are dicts emitted as YAML, in a fixed order with no timestamps or random
names, so that the output can be kept in git and re-rendered to the byte. The shutdown
numbers follow the server's own drain (see `service.cli.server._drain_on_sigterm`):

    pod deleted -> preStop sleeps `shutdown_delay` while the endpoints drop the pod, the
    server still serving -> SIGTERM: /ready and new work answer 503 with Connection: close
    for `shutdown_delay` more -> the listener closes, in-flight requests get `grace_period`
    -> on_cleanup, exit 0.

`terminationGracePeriodSeconds` covers all of it plus a margin, so that SIGKILL never cuts
a drain short.

Its modules: `k8s_options` (what `pipeserve k8s render` takes, checked), `k8s_objects` (the
objects), `k8s_output` (YAML on stdout, or a directory of files).
"""

from service.deployments.k8s_objects import render
from service.deployments.k8s_options import K8sOptions, ManifestError
from service.deployments.k8s_output import stale_files, to_yaml, write_directory

__all__ = [
    "K8sOptions",
    "ManifestError",
    "render",
    "stale_files",
    "to_yaml",
    "write_directory",
]
