"""What `pipeserve k8s render` takes, checked: a bad option is one `ManifestError` naming it.

The shutdown numbers (`termination_grace` and its parts) are derived here, from the
server's own settings, so that the objects only place them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from service.errors import PipeserveError

PORT = 8000
HOME = "/var/lib/pipeserve"
UID = 10001  # the image's user (Dockerfile)
# Seconds between the end of the server's drain and SIGKILL.
TERMINATION_MARGIN = 5
# Default for clusters: time for the endpoints to drop a terminating pod.
SHUTDOWN_DELAY = 5.0
GRACE_PERIOD = 30.0

_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_HOST = re.compile(r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_SECRET = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]{1,253}$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")


class ManifestError(PipeserveError):
    """The options cannot make valid manifests; the message names the option."""


@dataclass(frozen=True)
class K8sOptions:
    """What `pipeserve k8s render` takes; `settings` are server settings, by name."""

    name: str
    image: str
    pipeline: str
    pipeline_name: str = ""
    namespace: str | None = None
    replicas: int = 2
    min_replicas: int | None = None
    max_replicas: int | None = None
    target_cpu: int = 70
    cpu: str = "250m"
    memory: str = "512Mi"
    cpu_limit: str | None = None
    ingress_host: str | None = None
    ingress_class: str | None = None
    tls_secret: str | None = None
    database_url_secret: str | None = None
    webhook_secret_secret: str | None = None
    startup_timeout: int = 300
    settings: dict[str, Any] = field(default_factory=dict)
    # A PIPESERVE_AUTH_KEY_HASHES value (keys.hash_setting), for the Secret.
    auth_key_hashes: str = ""

    def __post_init__(self) -> None:
        checks = [
            (_DNS_LABEL, self.name, "--name", "lower-case letters, digits and '-', from a letter"),
            (_NAMESPACE, self.namespace, "--namespace", "a DNS label"),
            (_HOST, self.ingress_host, "--ingress-host", "a lower-case DNS name"),
            (_SECRET, self.tls_secret, "--tls-secret", "a Secret name"),
            (_QUANTITY, self.cpu, "--cpu", "a CPU quantity such as 250m or 1"),
            (_QUANTITY, self.cpu_limit, "--cpu-limit", "a CPU quantity such as 250m or 1"),
            (_QUANTITY, self.memory, "--memory", "a memory quantity such as 512Mi"),
        ]
        for pattern, value, option, what in checks:
            if value is not None and not pattern.match(value):
                raise ManifestError(f"{option} {value!r} is not {what}")
        if not self.image or any(c.isspace() for c in self.image):
            raise ManifestError(f"--image {self.image!r} is not an image reference")
        if self.tls_secret and not self.ingress_host:
            raise ManifestError("--tls-secret needs --ingress-host")
        if self.ingress_class and not self.ingress_host:
            raise ManifestError("--ingress-class needs --ingress-host")
        if self.min_replicas is not None and self.max_replicas is None:
            raise ManifestError("--min-replicas needs --max-replicas (autoscaling)")
        if self.max_replicas is not None and self.max_replicas < self.autoscale_min:
            raise ManifestError(
                f"--max-replicas {self.max_replicas} is below the minimum {self.autoscale_min}"
            )
        for option, reference in (
            ("--database-url-secret", self.database_url_secret),
            ("--webhook-secret-secret", self.webhook_secret_secret),
        ):
            if reference is not None:
                secret, _, key = reference.partition(":")
                if not _SECRET.match(secret) or (key and not _SECRET_KEY.match(key)):
                    raise ManifestError(f"{option} {reference!r} is not SECRET[:KEY]")

    @property
    def autoscale_min(self) -> int:
        return self.min_replicas if self.min_replicas is not None else self.replicas

    @property
    def shutdown_delay(self) -> float:
        return float(self.settings.get("shutdown_delay", SHUTDOWN_DELAY))

    @property
    def grace_period(self) -> float:
        return float(self.settings.get("grace_period", GRACE_PERIOD))

    @property
    def pre_stop_seconds(self) -> int:
        return math.ceil(self.shutdown_delay)

    @property
    def termination_grace(self) -> int:
        drain = self.pre_stop_seconds + self.shutdown_delay + self.grace_period
        return math.ceil(drain) + TERMINATION_MARGIN
