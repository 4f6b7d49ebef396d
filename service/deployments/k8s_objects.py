"""The Kubernetes objects that serve one pipeline: plain dicts, in apply order.

Only the options make them (no timestamps, no random names), so that a render can be kept
in git and made again to the byte. Settings reach the pods as `PIPESERVE_*` variables from
a ConfigMap; key hashes from a Secret; a database URL or webhook secret from the user's own
Secrets, never from the ConfigMap.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
from typing import Any

from service import __version__
from service.deployments.k8s_options import HOME, PORT, UID, K8sOptions
from service.settings import settings_env

_LABEL_VALUE_BAD = re.compile(r"[^-A-Za-z0-9_.]")

# Copied into each object: a caller may change what it gets, and YAML would alias an object
# it meets twice.
_POD_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": UID,
    "runAsGroup": UID,
    "fsGroup": UID,
    "seccompProfile": {"type": "RuntimeDefault"},
}
_CONTAINER_SECURITY = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}
# The root file system is read-only: the home (the SQLite run store) and /tmp are volumes.
_VOLUMES = [
    {"name": "home", "emptyDir": {"sizeLimit": "1Gi"}},
    {"name": "tmp", "emptyDir": {"sizeLimit": "512Mi"}},
]
_VOLUME_MOUNTS = [{"name": "home", "mountPath": HOME}, {"name": "tmp", "mountPath": "/tmp"}]


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


def _probe(path: str, period: int, timeout: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failures,
    }


def _from_secret(variable: str, reference: str, default_key: str) -> dict[str, Any]:
    """An environment variable read from a key of an existing Secret (SECRET[:KEY])."""
    secret, _, key = reference.partition(":")
    return {
        "name": variable,
        "valueFrom": {"secretKeyRef": {"name": secret, "key": key or default_key}},
    }


def _secret_env(o: K8sOptions) -> list[dict[str, Any]]:
    """The variables with a password: from the user's own Secrets, never the ConfigMap."""
    return [
        _from_secret(variable, reference, default_key)
        for variable, reference, default_key in (
            ("PIPESERVE_DATABASE_URL", o.database_url_secret, "database-url"),
            ("PIPESERVE_WEBHOOK_SECRET", o.webhook_secret_secret, "webhook-secret"),
        )
        if reference
    ]


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

    def _object(self, api_version: str, kind: str, **fields: Any) -> dict[str, Any]:
        return {"apiVersion": api_version, "kind": kind, "metadata": self.metadata(), **fields}

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
        return self._object("v1", "ConfigMap", data=self.config_data())

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
        if env := _secret_env(o):
            container["env"] = env
        container |= {
            "resources": {"requests": requests, "limits": limits},
            # /ready turns 200 once on_init has finished: the startup probe waits for it for
            # up to `startup_timeout` before liveness takes over.
            "startupProbe": _probe("/ready", 5, 3, max(1, math.ceil(o.startup_timeout / 5))),
            "readinessProbe": _probe("/ready", 5, 3, 2),
            "livenessProbe": _probe("/health", 10, 5, 3),
        }
        if o.pre_stop_seconds > 0:
            container["lifecycle"] = {"preStop": {"sleep": {"seconds": o.pre_stop_seconds}}}
        container["securityContext"] = copy.deepcopy(_CONTAINER_SECURITY)
        container["volumeMounts"] = copy.deepcopy(_VOLUME_MOUNTS)
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

    def pod_spec(self) -> dict[str, Any]:
        return {
            # The server never calls the Kubernetes API.
            "automountServiceAccountToken": False,
            # Service links would add variables such as PIPESERVE_PORT=tcp://... for a
            # Service named pipeserve, which the settings would then read.
            "enableServiceLinks": False,
            "securityContext": copy.deepcopy(_POD_SECURITY),
            "terminationGracePeriodSeconds": self.o.termination_grace,
            "topologySpreadConstraints": [
                {
                    "maxSkew": 1,
                    "topologyKey": "kubernetes.io/hostname",
                    "whenUnsatisfiable": "ScheduleAnyway",
                    "labelSelector": {"matchLabels": dict(self.selector)},
                }
            ],
            "containers": [self.container()],
            "volumes": copy.deepcopy(_VOLUMES),
        }

    def deployment(self) -> dict[str, Any]:
        spec: dict[str, Any] = {}
        if self.o.max_replicas is None:
            # With an autoscaler, the replica count is its to set, not the manifest's.
            spec["replicas"] = self.o.replicas
        spec |= {
            "selector": {"matchLabels": dict(self.selector)},
            # One new pod at a time, and none of the old ones goes before it is ready.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {
                "metadata": {"labels": dict(self.labels), "annotations": self.pod_annotations()},
                "spec": self.pod_spec(),
            },
        }
        return self._object("apps/v1", "Deployment", spec=spec)

    def service(self) -> dict[str, Any]:
        ports = [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
        spec = {"type": "ClusterIP", "selector": dict(self.selector), "ports": ports}
        return self._object("v1", "Service", spec=spec)

    def disruption_budget(self) -> dict[str, Any]:
        spec = {
            # One pod at a time may be evicted: drains proceed, capacity stays.
            "maxUnavailable": 1,
            "selector": {"matchLabels": dict(self.selector)},
            # A pod that is not ready serves nothing; evicting it must not block a drain.
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        }
        return self._object("policy/v1", "PodDisruptionBudget", spec=spec)

    def autoscaler(self) -> dict[str, Any]:
        o = self.o
        target = {"type": "Utilization", "averageUtilization": o.target_cpu}
        spec = {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": o.name},
            "minReplicas": o.autoscale_min,
            "maxReplicas": o.max_replicas,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": target}}],
        }
        return self._object("autoscaling/v2", "HorizontalPodAutoscaler", spec=spec)

    def ingress(self) -> dict[str, Any]:
        o = self.o
        assert o.ingress_host is not None
        spec: dict[str, Any] = {}
        if o.ingress_class:
            spec["ingressClassName"] = o.ingress_class
        if o.tls_secret:
            spec["tls"] = [{"hosts": [o.ingress_host], "secretName": o.tls_secret}]
        backend = {"service": {"name": o.name, "port": {"name": "http"}}}
        path = {"path": "/", "pathType": "Prefix", "backend": backend}
        spec["rules"] = [{"host": o.ingress_host, "http": {"paths": [path]}}]
        return self._object("networking.k8s.io/v1", "Ingress", spec=spec)


def render(options: K8sOptions) -> list[dict[str, Any]]:
    return Renderer(options).objects()
