"""Kubernetes manifests: valid against the Kubernetes schemas, consistent with the server's
shutdown and probes, accepted by the server itself, and kept in sync in deploy/k8s."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from kubernetes_validate.utils import latest_version, validate

from service.auth import KeyFile, hash_key, hash_setting, parse_hash_setting
from service.deployments.k8s import K8sOptions, ManifestError, render
from tests.conftest import ROOT, ServerFactory, require_binary, server_env

# The oldest Kubernetes the manifests are for: the preStop `sleep` action is on by default
# from 1.30. And the newest the installed kubernetes-validate knows.
KUBERNETES_VERSIONS = ["1.30.0", latest_version()]
DEPLOY_DIR = ROOT / "deploy" / "k8s"
README = (ROOT / "README.md").read_text()

BASE: dict[str, Any] = {
    "name": "training",
    "image": "ghcr.io/pipeserve/pipeserve:0.1.0",
    "pipeline": "pipelines.training:training_pipeline",
    "pipeline_name": "training_pipeline",
}
OPTION_SETS: dict[str, dict[str, Any]] = {
    "minimal": {},
    "everything": {
        "namespace": "ml-services",
        "min_replicas": 3,
        "max_replicas": 10,
        "target_cpu": 60,
        "cpu": "1",
        "cpu_limit": "2",
        "memory": "2Gi",
        "ingress_host": "training.example.com",
        "ingress_class": "nginx",
        "tls_secret": "training-tls",
        "database_url_secret": "training-db:url",
        "webhook_secret_secret": "training-webhooks",
        "startup_timeout": 900,
        "settings": {"max_concurrency": 16, "timeout": 60.0, "grace_period": 90.0},
        "auth_key_hashes": hash_setting([("ci", hash_key("a")), ("ops", hash_key("b"))]),
    },
    "one_replica_no_drain_metrics_auth": {
        "replicas": 1,
        "image": "registry.local:5000/team/pipeserve@sha256:" + "ab" * 32,
        "settings": {"shutdown_delay": 0.0, "grace_period": 10.0, "metrics_auth": True},
    },
    "workers_and_fractional_delay": {
        "replicas": 4,
        "settings": {"workers": 4, "shutdown_delay": 2.5, "log_format": "console"},
    },
}


def by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    kinds = {obj["kind"]: obj for obj in objects}
    assert len(kinds) == len(objects)
    return kinds


@pytest.mark.parametrize("option_set", sorted(OPTION_SETS))
def test_manifests_validate_and_agree_with_each_other(option_set: str) -> None:
    options = K8sOptions(**{**BASE, **OPTION_SETS[option_set]})
    objects = render(options)
    for obj in objects:
        for version in KUBERNETES_VERSIONS:
            validate(obj, version, strict=True)
    kinds = by_kind(objects)
    deployment, service, pdb = kinds["Deployment"], kinds["Service"], kinds["PodDisruptionBudget"]
    config = kinds["ConfigMap"]["data"]
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]

    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["selector"] == selector == pdb["spec"]["selector"]["matchLabels"]
    for obj in objects:
        labels = obj["metadata"]["labels"]
        assert {k.removeprefix("app.kubernetes.io/") for k in labels} == {
            "name", "instance", "version", "component", "part-of", "managed-by",
        }  # fmt: skip
        assert obj["metadata"].get("namespace") == options.namespace
    assert deployment["metadata"]["labels"]["app.kubernetes.io/version"] == (
        "0.1.0" if option_set != "one_replica_no_drain_metrics_auth" else "abababababab"
    )

    # The server reads what the ConfigMap and the Secret hold, and listens where probed.
    assert container["envFrom"] == [
        {"configMapRef": {"name": kinds["ConfigMap"]["metadata"]["name"]}},
        {"secretRef": {"name": kinds["Secret"]["metadata"]["name"]}},
    ]
    assert config["PIPESERVE_PIPELINE"] == BASE["pipeline"]
    assert config["PIPESERVE_HOST"] == "0.0.0.0"
    assert int(config["PIPESERVE_PORT"]) == container["ports"][0]["containerPort"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    startup = container["startupProbe"]
    assert startup["httpGet"]["path"] == "/ready"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= options.startup_timeout

    # SIGKILL never cuts the drain short: preStop, then shutdown_delay, then grace_period.
    delay = float(config["PIPESERVE_SHUTDOWN_DELAY"])
    grace = float(config["PIPESERVE_GRACE_PERIOD"])
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    assert pre_stop >= delay
    assert pod["spec"]["terminationGracePeriodSeconds"] > pre_stop + delay + grace

    # Locked down: non-root, nothing to escalate to, and writes only where emptyDirs are.
    security = container["securityContext"]
    assert security == {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    empty_dirs = {v["name"] for v in pod["spec"]["volumes"] if "emptyDir" in v}
    assert set(mounts) == {config["PIPESERVE_HOME"], "/tmp"}
    assert set(mounts.values()) <= empty_dirs

    annotations = pod["metadata"]["annotations"]
    if options.settings.get("metrics_auth"):
        assert "prometheus.io/scrape" not in annotations
    else:
        assert annotations["prometheus.io/path"] == "/metrics"
        assert annotations["prometheus.io/port"] == config["PIPESERVE_PORT"]

    secret = kinds["Secret"]
    if options.auth_key_hashes:
        value = secret["stringData"]["PIPESERVE_AUTH_KEY_HASHES"]
        assert [r.name for r in parse_hash_setting(value)] == ["ci", "ops"]
    else:
        assert "stringData" not in secret and "data" not in secret
    env = {e["name"]: e for e in container.get("env", [])}
    if options.database_url_secret:
        ref = env["PIPESERVE_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "training-db", "key": "url"}
    else:
        assert "PIPESERVE_DATABASE_URL" not in env
    if options.webhook_secret_secret:
        ref = env["PIPESERVE_WEBHOOK_SECRET"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "training-webhooks", "key": "webhook-secret"}
    # No password in the ConfigMap: those come from Secrets.
    assert not {"PIPESERVE_DATABASE_URL", "PIPESERVE_WEBHOOK_SECRET"} & set(
        kinds["ConfigMap"]["data"]
    )

    if options.max_replicas is not None:
        hpa = kinds["HorizontalPodAutoscaler"]
        assert "replicas" not in deployment["spec"]
        assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
        assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 10)
        assert container["resources"]["requests"]["cpu"] == "1"
        rule = kinds["Ingress"]["spec"]["rules"][0]
        assert rule["http"]["paths"][0]["backend"]["service"]["name"] == service["metadata"]["name"]
        assert kinds["Ingress"]["spec"]["tls"] == [
            {"hosts": ["training.example.com"], "secretName": "training-tls"}
        ]
    else:
        assert deployment["spec"]["replicas"] == options.replicas
        assert "HorizontalPodAutoscaler" not in kinds and "Ingress" not in kinds


def pipeserve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-P", "-m", "service", *args],
        cwd=ROOT, env=server_env(), capture_output=True, text=True, timeout=120,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_rendered_settings_and_generated_key_work_in_a_real_server(
    servers: ServerFactory, tmp_path: Path
) -> None:
    keys_file = tmp_path / "keys.json"
    file_key, _ = KeyFile(keys_file).create("ci")
    result = pipeserve(
        "k8s", "render", "tests.sample_pipelines:echo", "--name", "echo",
        "--image", "pipeserve:dev", "--generate-auth-key", "--auth-keys-file", str(keys_file),
        "--max-concurrency", "3", "--grace-period", "12", "--shutdown-delay", "0.5",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    key = result.stderr.strip().splitlines()[-1]
    assert key.startswith("psk_") and key not in result.stdout and file_key not in result.stdout
    assert result.stdout.startswith("# Rendered by `pipeserve k8s render`")
    kinds = by_kind(list(yaml.safe_load_all(result.stdout)))
    # The environment the pod gets from envFrom, on this machine's address, port and home.
    env = {**kinds["ConfigMap"]["data"], **kinds["Secret"]["stringData"]}
    assert env["PIPESERVE_MAX_CONCURRENCY"] == "3" and env["PIPESERVE_GRACE_PERIOD"] == "12.0"
    env["PIPESERVE_HOME"] = str(tmp_path / "home")
    del env["PIPESERVE_HOST"], env["PIPESERVE_PORT"]
    server = servers.start(env["PIPESERVE_PIPELINE"], env=env)
    with server.client() as http:
        info = http.get("/info", headers={"Authorization": f"Bearer {key}"})
        assert info.status_code == 200 and info.json()["deployment_name"] == "echo"
        assert http.post("/invoke", json={}).status_code == 401
        for valid in (key, file_key):
            answer = http.post(
                "/invoke", json={"parameters": {"x": 1}}, headers={"X-API-Key": valid}
            )
            assert answer.json()["outputs"] == {"y": 2}
    assert httpx.get(server.url + "/ready").status_code == 200


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"name": "Training"}, "--name 'Training' is not lower-case letters"),
        ({"name": "a" * 64}, "is not lower-case letters"),
        ({"tls_secret": "tls"}, "--tls-secret needs --ingress-host"),
        ({"min_replicas": 3, "max_replicas": 2}, "--max-replicas 2 is below the minimum 3"),
        ({"replicas": 4, "max_replicas": 2}, "--max-replicas 2 is below the minimum 4"),
        ({"min_replicas": 3}, "--min-replicas needs --max-replicas"),
        ({"cpu": "lots"}, "--cpu 'lots' is not a CPU quantity"),
        ({"memory": "1 GB"}, "--memory '1 GB' is not a memory quantity"),
        ({"database_url_secret": "Bad:k"}, "--database-url-secret 'Bad:k' is not SECRET[:KEY]"),
        ({"ingress_host": "Example.com"}, "--ingress-host 'Example.com' is not a lower-case"),
        ({"image": "my image"}, "--image 'my image' is not an image reference"),
    ],
)
def test_bad_options_name_the_option(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ManifestError) as caught:
        K8sOptions(**{**BASE, **options})
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--name", "Training"], "--name 'Training' is not lower-case letters"),
        (["--name", "t", "--max-concurrency", "0"], "max_concurrency (PIPESERVE_MAX_CONCURRENCY)"),
    ],
)
def test_bad_options_are_one_clear_line(args: list[str], message: str) -> None:
    result = pipeserve("k8s", "render", "pipelines:nothing", "--image", "pipeserve:dev", *args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr


def render_command() -> list[str]:
    """The README's render command for deploy/k8s, as arguments."""
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.DOTALL)
    (block,) = [b for b in blocks if "pipeserve k8s render pipelines.training" in b]
    joined = block.replace("\\\n", " ")
    (line,) = [line for line in joined.splitlines() if line.startswith("pipeserve k8s render")]
    return shlex.split(line)


def test_deploy_k8s_is_what_the_readme_command_renders(tmp_path: Path) -> None:
    command = render_command()
    output = command.index("--output")
    command[output + 1] = str(tmp_path / "k8s")
    result = pipeserve(*command[1:])
    assert result.returncode == 0, result.stderr
    rendered = {p.name: p.read_bytes() for p in (tmp_path / "k8s").iterdir()}
    committed = {p.name: p.read_bytes() for p in DEPLOY_DIR.iterdir()}
    hint = "deploy/k8s is out of date: run the README's `pipeserve k8s render` command"
    assert sorted(rendered) == sorted(committed), hint
    for name, content in rendered.items():
        assert content == committed[name], f"{name}: {hint}"
    for name in rendered:
        if name != "kustomization.yaml":
            for version in KUBERNETES_VERSIONS:
                validate(yaml.safe_load(rendered[name]), version, strict=True)


def test_kubectl_kustomize_builds_deploy_k8s() -> None:
    kubectl = require_binary("kubectl", "kubectl")
    result = subprocess.run(
        [kubectl, "kustomize", str(DEPLOY_DIR)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    built = list(yaml.safe_load_all(result.stdout))
    listed = yaml.safe_load((DEPLOY_DIR / "kustomization.yaml").read_text())["resources"]
    assert sorted(f"{obj['kind'].lower()}.yaml" for obj in built) == sorted(listed)
    for obj in built:
        validate(obj, latest_version(), strict=True)


def test_passwords_only_come_from_secrets_and_shared_runs_need_a_database() -> None:
    args = ("k8s", "render", "tests.run_pipelines:three_steps", "--name", "t",
            "--image", "pipeserve:dev")  # fmt: skip
    for flag in ("--database-url", "--webhook-secret"):
        refused = pipeserve(*args, flag, "postgresql://u:hunter2@db/runs")
        assert refused.returncode == 2 and f"No such option '{flag}'" in refused.stderr
    alone = pipeserve(*args)
    assert alone.returncode == 0
    assert "without --database-url-secret each pod keeps its runs" in alone.stderr
    shared = pipeserve(*args, "--database-url-secret", "runs-db")
    assert shared.returncode == 0 and "warning" not in shared.stderr
