"""Kubernetes manifests for a pipeline server: plain objects, rendered the same every time.

The objects are dicts emitted as YAML, in a fixed order with no timestamps or random
names, so that the output can be kept in git and re-rendered to the byte. The shutdown
numbers follow the server's own drain (see `PipelineService._drain_on_sigterm`):

    pod deleted -> preStop sleeps `shutdown_delay` while the endpoints drop the pod, the
    server still serving -> SIGTERM: /ready and new work answer 503 with Connection: close
    for `shutdown_delay` more -> the listener closes, in-flight requests get `grace_period`
    -> on_cleanup, exit 0.

`terminationGracePeriodSeconds` covers all of it plus a margin, so that SIGKILL never cuts
a drain short.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from service import __version__
from service.settings import settings_env

PORT = 8000
HOME = "/var/lib/pipeserve"
UID = 10001  # the image's user (Dockerfile)
# Seconds between the end of the server's drain and SIGKILL.
TERMINATION_MARGIN = 5
# Default for clusters: time for the endpoints to drop a terminating pod.
SHUTDOWN_DELAY = 5.0
GRACE_PERIOD = 30.0
HEADER = "# Rendered by `pipeserve k8s render`: change the command and render again.\n"

_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_HOST = re.compile(r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_SECRET = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]{1,253}$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_LABEL_VALUE_BAD = re.compile(r"[^-A-Za-z0-9_.]")


class ManifestError(Exception):
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


def label_value(text: str) -> str:
    """`text` as a valid label value: at most 63 characters, alphanumeric at both ends."""
    return _LABEL_VALUE_BAD.sub("-", text)[:63].strip("-_.")


def image_version(image: str) -> str:
    """The image's tag (or digest), for the version label; pipeserve's own version if none."""
    reference, _, digest = image.partition("@")
    repository_end = reference.rfind("/")
    tag = reference[repository_end + 1 :].partition(":")[2]
    if tag:
        return label_value(tag) or __version__
    if digest:
        return label_value(digest.partition(":")[2][:12]) or __version__
    return __version__


def _checksum(data: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


class Renderer:
    """The manifests for one deployment; `objects()` lists them in apply order."""

    def __init__(self, options: K8sOptions) -> None:
        self.o = options
        self.selector = {
            "app.kubernetes.io/name": "pipeserve",
            "app.kubernetes.io/instance": options.name,
        }
        self.labels = {
            **self.selector,
            "app.kubernetes.io/version": image_version(options.image),
            "app.kubernetes.io/component": "pipeline-server",
            "app.kubernetes.io/part-of": label_value(options.pipeline_name) or options.name,
            "app.kubernetes.io/managed-by": "pipeserve",
        }

    @property
    def auth_secret_name(self) -> str:
        return f"{self.o.name}-auth"

    def metadata(self, name: str | None = None) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": name or self.o.name}
        if self.o.namespace:
            meta["namespace"] = self.o.namespace
        meta["labels"] = dict(self.labels)
        return meta

    def objects(self) -> list[dict[str, Any]]:
        objects = [self.config_map(), self.auth_secret(), self.deployment(), self.service()]
        objects.append(self.disruption_budget())
        if self.o.max_replicas is not None:
            objects.append(self.autoscaler())
        if self.o.ingress_host:
            objects.append(self.ingress())
        return objects

    def config_data(self) -> dict[str, str]:
        settings = {
            **self.o.settings,
            "pipeline": self.o.pipeline,
            "name": self.o.name,
            "host": "0.0.0.0",
            "port": PORT,
            "home": HOME,
            "shutdown_delay": self.o.shutdown_delay,
            "grace_period": self.o.grace_period,
        }
        if self.o.auth_key_hashes:
            # Rendered with keys: a Secret emptied later must not open the pods.
            settings.setdefault("auth", "required")
        return settings_env(dict(sorted(settings.items())))

    def auth_data(self) -> dict[str, str]:
        if not self.o.auth_key_hashes:
            return {}
        return {"PIPESERVE_AUTH_KEY_HASHES": self.o.auth_key_hashes}

    def config_map(self) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": self.metadata(),
            "data": self.config_data(),
        }

    def auth_secret(self) -> dict[str, Any]:
        """Valid key hashes (never keys). Rendered with none, auth stays off until one is
        added; rendered with some, the ConfigMap sets auth=required, so emptying the Secret
        leaves the pods refusing every request rather than open."""
        secret: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": self.metadata(self.auth_secret_name),
            "type": "Opaque",
        }
        if self.auth_data():
            secret["stringData"] = self.auth_data()
        return secret

    def _probe(self, path: str, period: int, timeout: int, failures: int) -> dict[str, Any]:
        return {
            "httpGet": {"path": path, "port": "http"},
            "periodSeconds": period,
            "timeoutSeconds": timeout,
            "failureThreshold": failures,
        }

    def container(self) -> dict[str, Any]:
        o = self.o
        requests = {"cpu": o.cpu, "memory": o.memory}
        # A memory limit equal to the request: the pod is never killed for memory the
        # scheduler promised it. CPU is only limited when asked (limits throttle).
        limits = {"memory": o.memory, **({"cpu": o.cpu_limit} if o.cpu_limit else {})}
        container: dict[str, Any] = {
            "name": "pipeserve",
            "image": o.image,
            "imagePullPolicy": "IfNotPresent",
            "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"}],
            "envFrom": [
                {"configMapRef": {"name": o.name}},
                {"secretRef": {"name": self.auth_secret_name}},
            ],
        }
        # Values with a password go from the user's own Secrets, never in the ConfigMap.
        env = [
            _from_secret(variable, reference, default_key)
            for variable, reference, default_key in (
                ("PIPESERVE_DATABASE_URL", o.database_url_secret, "database-url"),
                ("PIPESERVE_WEBHOOK_SECRET", o.webhook_secret_secret, "webhook-secret"),
            )
            if reference
        ]
        if env:
            container["env"] = env
        container |= {
            "resources": {"requests": requests, "limits": limits},
            # /ready turns 200 once on_init has finished: the startup probe waits for it for
            # up to `startup_timeout` before liveness takes over.
            "startupProbe": self._probe("/ready", 5, 3, max(1, math.ceil(o.startup_timeout / 5))),
            "readinessProbe": self._probe("/ready", 5, 3, 2),
            "livenessProbe": self._probe("/health", 10, 5, 3),
        }
        if o.pre_stop_seconds > 0:
            container["lifecycle"] = {"preStop": {"sleep": {"seconds": o.pre_stop_seconds}}}
        container |= {
            "securityContext": {
                "runAsNonRoot": True,
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True,
                "capabilities": {"drop": ["ALL"]},
            },
            "volumeMounts": [
                {"name": "home", "mountPath": HOME},
                {"name": "tmp", "mountPath": "/tmp"},
            ],
        }
        return container

    def pod_annotations(self) -> dict[str, str]:
        annotations: dict[str, str] = {}
        if not self.o.settings.get("metrics_auth"):
            # Scraping sends no key, so it is only announced while /metrics needs none.
            annotations |= {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(PORT),
                "prometheus.io/path": "/metrics",
            }
        # Settings and keys reach the pods as environment variables, read at start: a change
        # of either changes these, and so rolls the pods.
        annotations["checksum/config"] = _checksum(self.config_data())
        annotations["checksum/auth"] = _checksum(self.auth_data())
        return annotations

    def deployment(self) -> dict[str, Any]:
        o = self.o
        spec: dict[str, Any] = {}
        if o.max_replicas is None:
            # With an autoscaler, the replica count is its to set, not the manifest's.
            spec["replicas"] = o.replicas
        spec |= {
            "selector": {"matchLabels": dict(self.selector)},
            # One new pod at a time, and none of the old ones goes before it is ready.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {
                "metadata": {"labels": dict(self.labels), "annotations": self.pod_annotations()},
                "spec": {
                    # The server never calls the Kubernetes API.
                    "automountServiceAccountToken": False,
                    # Service links would add variables such as PIPESERVE_PORT=tcp://...
                    # for a Service named pipeserve, which the settings would then read.
                    "enableServiceLinks": False,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": UID,
                        "runAsGroup": UID,
                        "fsGroup": UID,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "terminationGracePeriodSeconds": o.termination_grace,
                    "topologySpreadConstraints": [
                        {
                            "maxSkew": 1,
                            "topologyKey": "kubernetes.io/hostname",
                            "whenUnsatisfiable": "ScheduleAnyway",
                            "labelSelector": {"matchLabels": dict(self.selector)},
                        }
                    ],
                    "containers": [self.container()],
                    "volumes": [
                        {"name": "home", "emptyDir": {"sizeLimit": "1Gi"}},
                        {"name": "tmp", "emptyDir": {"sizeLimit": "512Mi"}},
                    ],
                },
            },
        }
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": self.metadata(),
            "spec": spec,
        }

    def service(self) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": self.metadata(),
            "spec": {
                "type": "ClusterIP",
                "selector": dict(self.selector),
                "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
            },
        }

    def disruption_budget(self) -> dict[str, Any]:
        return {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": self.metadata(),
            "spec": {
                # One pod at a time may be evicted: drains proceed, capacity stays.
                "maxUnavailable": 1,
                "selector": {"matchLabels": dict(self.selector)},
                # A pod that is not ready serves nothing; evicting it must not block a drain.
                "unhealthyPodEvictionPolicy": "AlwaysAllow",
            },
        }

    def autoscaler(self) -> dict[str, Any]:
        o = self.o
        return {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": self.metadata(),
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": o.name},
                "minReplicas": o.autoscale_min,
                "maxReplicas": o.max_replicas,
                "metrics": [
                    {
                        "type": "Resource",
                        "resource": {
                            "name": "cpu",
                            "target": {"type": "Utilization", "averageUtilization": o.target_cpu},
                        },
                    }
                ],
            },
        }

    def ingress(self) -> dict[str, Any]:
        o = self.o
        assert o.ingress_host is not None
        spec: dict[str, Any] = {}
        if o.ingress_class:
            spec["ingressClassName"] = o.ingress_class
        if o.tls_secret:
            spec["tls"] = [{"hosts": [o.ingress_host], "secretName": o.tls_secret}]
        backend = {"service": {"name": o.name, "port": {"name": "http"}}}
        spec["rules"] = [
            {
                "host": o.ingress_host,
                "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": backend}]},
            }
        ]
        return {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": self.metadata(),
            "spec": spec,
        }


def render(options: K8sOptions) -> list[dict[str, Any]]:
    return Renderer(options).objects()


def _dump(document: Any) -> str:
    # No line wrapping: a long value (a list of key hashes) stays on one line.
    return yaml.safe_dump(document, sort_keys=False, width=1_000_000)


def to_yaml(objects: Iterable[dict[str, Any]]) -> str:
    """One multi-document YAML stream."""
    return HEADER + "".join(f"---\n{_dump(obj)}" for obj in objects)


def file_name(obj: dict[str, Any]) -> str:
    return f"{obj['kind'].lower()}.yaml"


def kustomization(objects: Iterable[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [file_name(obj) for obj in objects],
    }


def write_directory(objects: list[dict[str, Any]], directory: Path) -> list[Path]:
    """One file per object and a kustomization.yaml listing them; the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {file_name(obj): HEADER + _dump(obj) for obj in objects}
    files["kustomization.yaml"] = HEADER + _dump(kustomization(objects))
    written = []
    for name, text in files.items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written


def stale_files(directory: Path, written: list[Path]) -> list[Path]:
    """Files of an earlier render in `directory` that this one did not write."""
    return sorted(
        path
        for path in directory.glob("*.yaml")
        if path not in written and path.read_text().startswith(HEADER)
    )


def _from_secret(variable: str, reference: str, default_key: str) -> dict[str, Any]:
    """An environment variable read from a key of an existing Secret (SECRET[:KEY])."""
    secret, _, key = reference.partition(":")
    return {
        "name": variable,
        "valueFrom": {"secretKeyRef": {"name": secret, "key": key or default_key}},
    }
