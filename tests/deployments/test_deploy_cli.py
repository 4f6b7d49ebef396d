"""The local deployment lifecycle, driven through the CLI as a user drives it."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from service.cli.params import ParameterError, coerce, parse_parameters
from service.deployments.local import log_tail
from service.runs.webhooks import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from tests.conftest import ROOT, free_port, server_env
from tests.runs.test_webhooks import Receiver

GREETER = """
from typing import Annotated

from service import pipeline, step


@step
def greet(name: str, times: int = 1) -> Annotated[str, "greeting"]:
    return " ".join(["{word}, " + name] * times)


@pipeline
def greeter(name: str = "world", times: int = 1):
    return greet(name, times)
"""


class CLI:
    """`python -P -m service ...` with its own home, run in `cwd` with `pythonpath` (by
    default the repository, for the test pipelines, and `modules`; empty: none at all)."""

    def __init__(
        self,
        home: Path,
        modules: Path,
        cwd: Path = ROOT,
        pythonpath: tuple[Path, ...] | None = None,
    ) -> None:
        self.home = home
        self.modules = modules
        self.cwd = cwd
        self.pythonpath = (ROOT, modules) if pythonpath is None else pythonpath

    def env(self) -> dict[str, str]:
        env = server_env({"PIPESERVE_HOME": str(self.home)})
        env["PYTHONPATH"] = os.pathsep.join(str(path) for path in self.pythonpath)
        if not self.pythonpath:
            del env["PYTHONPATH"]
        return env

    def __call__(
        self, *args: str, ok: bool = True, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-P", "-m", "service", *args],
            cwd=self.cwd,
            env={**self.env(), **(env or {})},
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
        if ok:
            assert result.returncode == 0, (args, result.stdout, result.stderr)
        return result

    def describe(self, name: str) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(self("deployment", "describe", name, "--json").stdout)
        return document

    def processes(self) -> list[psutil.Process]:
        """Every live process of this home: servers, their workers, whatever they started."""
        found = []
        for proc in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if proc.environ().get("PIPESERVE_HOME") == str(self.home) and running(proc.pid):
                    found.append(proc)
        return found

    def invoke(self, name: str, *params: str, ok: bool = True) -> Any:
        result = self("deployment", "invoke", name, *params, ok=ok)
        return result if not ok else json.loads(result.stdout)


def running(pid: int) -> bool:
    try:
        proc = psutil.Process(pid)
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_gone(pid: int) -> None:
    deadline = time.monotonic() + 10
    while running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def write_greeter(directory: Path, word: str) -> None:
    (directory / "greeter_mod.py").write_text(GREETER.replace("{word}", word))
    # A fresh mtime for the edited module, whatever the file system's resolution.
    for cache in directory.glob("__pycache__/greeter_mod*"):
        cache.unlink()


@contextlib.contextmanager
def killing_leftovers(runner: CLI) -> Iterator[CLI]:
    """Whatever a failed test left running goes; the tests themselves assert nothing is left."""
    try:
        yield runner
    finally:
        for proc in runner.processes():
            with contextlib.suppress(psutil.Error):
                proc.kill()


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[CLI]:
    modules = tmp_path / "modules"
    modules.mkdir()
    with killing_leftovers(CLI(tmp_path / "home", modules)) as runner:
        yield runner


def test_training_lifecycle(cli: CLI) -> None:
    deployed = cli(
        "deploy", "pipelines.training:training_pipeline", "--name", "training",
        "--generate-auth-key", "--max-concurrency", "4",
    )  # fmt: skip
    key = deployed.stdout.strip()
    assert key.startswith("psk_") and "\n" not in key
    assert "deployed 'training' at http://127.0.0.1:" in deployed.stderr

    record_file = cli.home / "deployments" / "training.json"
    key_file = cli.home / "deployments" / "training.key"
    assert key not in record_file.read_text()
    assert key_file.read_text().strip() == key
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

    listed = cli("deployment", "list").stdout.splitlines()
    assert listed[0].split() == ["NAME", "STATUS", "URL", "PID", "UPTIME", "PIPELINE"]
    assert listed[1].split()[:2] == ["training", "running"]

    described = cli.describe("training")
    url, pid = described["url"], described["pid"]
    assert [p.pid for p in cli.processes()] == [pid]
    assert described["status"] == "running" and described["pipeline"].endswith("training_pipeline")
    assert described["info"]["deployment_name"] == "training"
    assert described["record"]["settings"] == {"max_concurrency": 4}
    text = cli("deployment", "describe", "training").stdout
    for expected in (
        f"url:        {url}", "status:     running", f"pid:        {pid}", "uptime:",
        f"directory:  {ROOT}",
    ):  # fmt: skip
        assert expected in text
    assert 'model_type  string  default "random_forest"' in text

    # Auth is on: only the deployment's key gets in, and the CLI sends it.
    assert httpx.post(url + "/invoke", json={}).status_code == 401
    answer = cli.invoke("training")
    assert answer["success"] is True
    assert answer["outputs"]["metrics"]["model_type"] == "random_forest"
    answer = cli.invoke("training", "--model_type=gradient_boosting", "--data_url", "s3://b/x")
    assert answer["metadata"]["parameters_used"] == {
        "data_url": "s3://b/x",
        "model_type": "gradient_boosting",
    }
    tail = cli("deployment", "logs", "training", "--tail", "2").stdout.splitlines()
    assert [json.loads(line)["path"] for line in tail] == ["/info", "/invoke"]
    assert json.loads(tail[1])["status"] == 200
    whole = cli("deployment", "logs", "training").stdout.splitlines()
    assert whole[-2:] == tail and any(json.loads(line)["message"] == "ready" for line in whole)
    bad = cli.invoke("training", "--learning_rate=0.1", ok=False)
    assert bad.returncode == 1
    assert json.loads(bad.stdout)["error"]["type"] == "validation_error"
    assert "invoke failed: 422 validation_error" in bad.stderr
    assert "learning_rate: Extra inputs are not permitted" in bad.stderr
    failed = cli.invoke("training", "--model_type=linear", ok=False)
    assert failed.returncode == 1
    assert "500 ValueError" in failed.stderr and "Unknown model type: linear" in failed.stderr

    again = cli("deploy", "pipelines.training:training_pipeline", "--name", "training", ok=False)
    assert again.returncode == 1 and "pass --update" in again.stderr

    with subprocess.Popen(
        [sys.executable, "-P", "-m", "service", "deployment", "logs", "training", "-f", "--tail=1"],
        cwd=ROOT, env=cli.env(), stdout=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
    ) as follower:  # fmt: skip
        try:
            assert follower.stdout is not None
            assert json.loads(follower.stdout.readline())["path"] == "/invoke"  # the tail
            cli.invoke("training", "--model_type=random_forest")
            followed = [json.loads(follower.stdout.readline()) for _ in range(2)]
            assert [line["path"] for line in followed] == ["/info", "/invoke"]
            stopped = cli("deployment", "deprovision", "training")
            # The follower ends by itself once the deployment has stopped.
            assert follower.wait(10) == 0
        finally:
            follower.kill()
    assert "deployment 'training' stopped" in stopped.stderr
    assert cli.processes() == []
    assert cli.describe("training")["status"] == "stopped"
    gone = cli.invoke("training", ok=False)
    assert gone.returncode == 1 and "is stopped" in gone.stderr
    cli("deployment", "delete", "training")
    assert sorted(p.name for p in (cli.home / "deployments").iterdir()) == []
    assert cli("deployment", "list").stdout.splitlines()[1:] == []


def test_update_stale_and_fixed_port(cli: CLI) -> None:
    write_greeter(cli.modules, "hello")
    cli("deploy", "greeter_mod:greeter", "--name", "greeter")
    first = cli.describe("greeter")
    assert cli.invoke("greeter", "--times=2")["outputs"]["greeting"] == "hello, world hello, world"
    typed = cli.invoke("greeter", "--times=two", ok=False)
    assert typed.returncode == 1 and "times: Input should be a valid integer" in typed.stderr
    # Not `--name=value`: the arguments cannot be used (2), nothing is invoked.
    oops = cli.invoke("greeter", "oops", ok=False)
    assert (oops.returncode, oops.stdout) == (2, "")
    assert oops.stderr == "pipeserve: 'oops' is not a parameter: write --name=value\n"

    # Broken new code: the update fails with the server's last words; the old one serves on.
    (cli.modules / "greeter_mod.py").write_text("import no_such_dependency\n")
    failed = cli("deploy", "greeter_mod:greeter", "--name", "greeter", "--update", ok=False)
    assert failed.returncode == 1 and "no_such_dependency" in failed.stderr
    assert cli.describe("greeter")["pid"] == first["pid"] and running(first["pid"])
    assert cli.invoke("greeter")["outputs"]["greeting"] == "hello, world"

    # New code, a free port: the new process serves before the old one stops.
    write_greeter(cli.modules, "bonjour")
    updated = cli("deploy", "greeter_mod:greeter", "--name", "greeter", "--update")
    assert f"stopping the old one (pid {first['pid']})" in updated.stderr
    second = cli.describe("greeter")
    assert second["pid"] != first["pid"] and second["url"] != first["url"]
    assert not running(first["pid"])
    assert cli.invoke("greeter", "--name=ami")["outputs"]["greeting"] == "bonjour, ami"

    # A process that died behind our back: stale, and a deploy cleans it up.
    os.kill(second["pid"], signal.SIGKILL)
    wait_gone(second["pid"])
    assert cli("deployment", "list").stdout.splitlines()[1].split()[1] == "stale"
    assert cli.describe("greeter")["status"] == "stale"
    port = free_port()
    redeployed = cli("deploy", "greeter_mod:greeter", "--name", "greeter", "--port", str(port))
    assert "replacing the stale record" in redeployed.stderr
    third = cli.describe("greeter")
    assert third["url"] == f"http://127.0.0.1:{port}"

    # A fixed port: the old process must go first, and the user is told so.
    write_greeter(cli.modules, "hallo")
    fixed = cli("deploy", "greeter_mod:greeter", "--name", "greeter", "--update")
    assert f"port {port} is fixed: stopping the old process (pid {third['pid']})" in fixed.stderr
    fourth = cli.describe("greeter")
    assert fourth["url"] == third["url"] and not running(third["pid"])
    assert cli.invoke("greeter")["outputs"]["greeting"] == "hallo, world"

    # Deprovision cleans a stale record up too.
    os.kill(fourth["pid"], signal.SIGKILL)
    wait_gone(fourth["pid"])
    cleaned = cli("deployment", "deprovision", "greeter")
    assert "was stale (its process was gone); record cleaned up" in cleaned.stderr
    assert cli.describe("greeter")["status"] == "stopped"
    deleted = cli("deployment", "delete", "greeter")
    assert "was not running; deleted" in deleted.stderr
    assert cli.processes() == []
    assert list((cli.home / "deployments").iterdir()) == []


def test_deprovision_stops_every_worker_process(cli: CLI) -> None:
    write_greeter(cli.modules, "hej")
    cli("deploy", "greeter_mod:greeter", "--name", "pool", "--workers", "2")
    assert cli.invoke("pool")["outputs"]["greeting"] == "hej, world"
    pid = cli.describe("pool")["pid"]
    # uvicorn's supervisor and its two workers (plus, maybe, a multiprocessing helper).
    deadline = time.monotonic() + 30
    while len(psutil.Process(pid).children(recursive=True)) < 2:
        assert time.monotonic() < deadline, "the two workers never started"
        time.sleep(0.1)
    assert len(cli.processes()) >= 3
    stopped = cli("deployment", "deprovision", "pool")
    assert "deployment 'pool' stopped" in stopped.stderr, stopped.stderr  # within its grace
    assert cli.processes() == []


def test_retry_reruns_a_failed_run_from_its_checkpoints(cli: CLI, tmp_path: Path) -> None:
    cli("deploy", "tests.durable_pipelines:checked", "--name", "retry", "--poll-interval", "0.2")
    url = cli.describe("retry")["url"]
    log, gate = tmp_path / "run.log", tmp_path / "fixed"
    with httpx.Client(base_url=url, timeout=30) as http:
        params = {"log": str(log), "gate": str(gate)}
        run_id = http.post("/runs", json={"parameters": params}).json()["run_id"]
        deadline = time.monotonic() + 20
        while http.get(f"/runs/{run_id}").json()["status"] != "failed":
            assert time.monotonic() < deadline
            time.sleep(0.05)
    unknown = cli("deployment", "retry", "retry", run_id, "--from-step", "nope", ok=False)
    assert unknown.returncode == 1
    assert "422 validation_error" in unknown.stderr and "no step 'nope'" in unknown.stderr
    gate.touch()  # the data source is fixed
    retried = json.loads(cli("deployment", "retry", "retry", run_id, "--wait").stdout)
    assert retried["status"] == "succeeded" and retried["run_id"] != run_id
    assert retried["steps"]["double"]["status"] == "restored"
    rerun = json.loads(
        cli("deployment", "retry", "retry", run_id, "--from-step", "double", "--wait").stdout
    )
    assert [rerun["steps"][s]["status"] for s in ("start", "double", "check", "finish")] == [
        "restored", "completed", "completed", "completed",
    ]  # fmt: skip
    cli("deployment", "deprovision", "retry")
    gone = cli("deployment", "retry", "retry", run_id, ok=False)
    assert gone.returncode == 1 and "is stopped" in gone.stderr


def test_a_webhook_secret_reaches_the_server_and_is_never_shown(cli: CLI) -> None:
    secret = "whsec-deploy-7c1e"
    receiver = Receiver(failures=0)
    try:
        cli(
            "deploy", "tests.run_pipelines:three_steps", "--name", "hooks",
            "--max-concurrency", "3", env={"PIPESERVE_WEBHOOK_SECRET": secret},
        )  # fmt: skip
        for shown in (
            cli("deployment", "describe", "hooks", "--json").stdout,
            cli("deployment", "describe", "hooks").stdout,
            (cli.home / "deployments" / "hooks.json").read_text(),
        ):
            assert secret not in shown and "webhook_secret" in shown
        record = cli.describe("hooks")["record"]
        assert record["settings"] == {"max_concurrency": 3, "webhook_secret": "***"}
        secrets_file = cli.home / "deployments" / "hooks.secrets"
        assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600

        # The server signs with the secret; an update without it in the shell keeps it.
        for delivery in range(2):
            url = cli.describe("hooks")["url"]
            body = {"parameters": {"seconds": 0}, "webhook_url": receiver.url}
            assert httpx.post(url + "/runs", json=body).status_code == 202
            deadline = time.monotonic() + 20
            while len(receiver.deliveries) <= delivery and time.monotonic() < deadline:
                time.sleep(0.1)
            headers, sent, _ = receiver.deliveries[delivery]
            assert verify(secret, sent, headers[TIMESTAMP_HEADER], headers[SIGNATURE_HEADER])
            if delivery == 0:
                cli("deploy", "tests.run_pipelines:three_steps", "--name", "hooks", "--update")
                assert cli.describe("hooks")["url"] != url
        assert cli.describe("hooks")["record"]["settings"]["webhook_secret"] == "***"
    finally:
        receiver.close()
    cli("deployment", "delete", "hooks")
    assert cli.processes() == []
    assert list((cli.home / "deployments").iterdir()) == []


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_projects_own_service_package_never_shadows_pipeserve(
    tmp_path: Path, workers: str
) -> None:
    """A user's project may hold a `service/` package of its own: deployed from there, the
    server is still pipeserve's (it runs `python -P -m service`), and the pipeline is the
    project's, imported from the working directory once pipeserve is; in each worker
    process too."""
    project = tmp_path / "project"
    shutil.copytree(
        ROOT / "pipelines", project / "pipelines", ignore=shutil.ignore_patterns("__pycache__")
    )
    training = project / "pipelines" / "training.py"
    original = '"""A configurable training pipeline that can be triggered externally."""'
    assert original in training.read_text()
    training.write_text(training.read_text().replace(original, '"""The project\'s own copy."""'))
    marker = tmp_path / "users-service-imported"
    (project / "service").mkdir()
    (project / "service" / "__init__.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "raise ImportError('the project\\'s own service package was imported')\n"
    )
    # No PYTHONPATH at all: pipeserve is found where it is installed, and nothing else
    # (the repository's own `pipelines`, say) could stand in for the project's modules.
    runner = CLI(tmp_path / "home", project, cwd=project, pythonpath=())
    with killing_leftovers(runner) as cli:
        deployed = cli(
            "deploy", "pipelines.training:training_pipeline", "--name", "mine", "--workers", workers
        )
        assert "deployed 'mine'" in deployed.stderr
        described = cli.describe("mine")
        assert described["record"]["cwd"] == str(project)
        info = httpx.get(described["url"] + "/info", timeout=10).json()
        assert info["pipeline_name"] == "training_pipeline"
        assert info["description"] == "The project's own copy."
        assert info["pipeserve_version"]
        assert cli.invoke("mine")["success"] is True
        cli("deployment", "delete", "mine")
        assert cli.processes() == []
    assert not marker.exists()


def test_a_server_that_dies_at_start_shows_its_log(cli: CLI) -> None:
    (cli.modules / "broken_mod.py").write_text("raise RuntimeError('no model file')\n")
    result = cli("deploy", "broken_mod:p", "--name", "broken", ok=False)
    assert result.returncode == 1
    assert "RuntimeError: no model file" in result.stderr
    assert "exited with code 2 before it was ready" in result.stderr
    assert cli("deployment", "list").stdout.splitlines()[1:] == []


def test_unknown_deployment_is_one_clear_line(cli: CLI) -> None:
    for command in ("describe", "logs", "invoke", "deprovision", "delete"):
        result = cli("deployment", command, "nothing", ok=False)
        assert result.returncode == 1
        assert result.stderr.strip() == (
            "pipeserve: no deployment named 'nothing' (see `pipeserve deployment list`)"
        )


SCHEMA: dict[str, Any] = {
    "properties": {
        "n": {"type": "integer"},
        "rate": {"type": "number"},
        "on": {"type": "boolean"},
        "label": {"type": "string"},
        "values": {"type": "array", "items": {"type": "number"}},
        "options": {"type": "object"},
        "maybe": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        "mode": {"$ref": "#/$defs/Mode"},
        "model_type": {"type": "string"},
    },
    "$defs": {"Mode": {"enum": ["fast", "slow"]}},
}


def test_parameters_are_typed_by_the_schema() -> None:
    args = [
        "--n=3", "--rate", "0.5", "--on", "--label=42", "--values=[1, 2.5]",
        '--options={"a": 1}', "--maybe=None", "--mode=fast", "--model-type=gb",
    ]  # fmt: skip
    assert parse_parameters(args, SCHEMA) == {
        "n": 3,
        "rate": 0.5,
        "on": True,
        "label": "42",
        "values": [1, 2.5],
        "options": {"a": 1},
        "maybe": None,
        "mode": "fast",
        "model_type": "gb",
    }
    # What does not fit is sent as written: the server's 422 names the problem.
    assert coerce("three", SCHEMA["properties"]["n"], {}) == "three"
    assert coerce("False", SCHEMA["properties"]["on"], {}) is False
    assert coerce("12", SCHEMA["properties"]["maybe"], {}) == "12"
    assert parse_parameters(["--unknown=7"], SCHEMA) == {"unknown": 7}
    with pytest.raises(ParameterError, match="'n=3' is not a parameter"):
        parse_parameters(["n=3"], SCHEMA)
    with pytest.raises(ParameterError, match="given twice"):
        parse_parameters(["--n=1", "--n=2"], SCHEMA)


@pytest.mark.parametrize("ending", ["\n", ""])
def test_log_tail_reads_whole_lines_from_the_end(tmp_path: Path, ending: str) -> None:
    path = tmp_path / "big.log"
    lines = [f"line {i} " + "x" * (i % 50) for i in range(20000)]  # several 64 KiB blocks
    path.write_text("\n".join(lines) + ending)
    for n in (0, 1, 2, 1999, 20000, 25000):
        assert log_tail(path, n) == (lines[-n:] if n else [])
    start = len("\n".join(lines[:19990])) + 1
    assert log_tail(path, 100, start=start) == lines[19990:]
    assert log_tail(tmp_path / "missing.log", 5) == []
