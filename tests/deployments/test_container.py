"""The container image: its Dockerfile lints clean, and its command serves when run here.

No Docker engine runs on these machines, so the image's ENTRYPOINT and CMD run directly,
with the environment the Dockerfile sets, from a copy of its WORKDIR.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import dockerfile

from tests.conftest import ROOT, ServerProcess, free_port

DOCKERFILE = ROOT / "Dockerfile"
BIN = Path(sys.executable).parent


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "hadolint"), "--no-color", "--disable-ignore-pragma",
         "--failure-threshold", "style", str(path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def final_stage() -> list[dockerfile.Command]:
    commands = dockerfile.parse_file(str(DOCKERFILE))
    last_from = max(i for i, c in enumerate(commands) if c.cmd == "FROM")
    return list(commands[last_from:])


def instruction(stage: list[dockerfile.Command], name: str) -> dockerfile.Command:
    (found,) = [c for c in stage if c.cmd == name]
    return found


def test_dockerfile_lints_clean(tmp_path: Path) -> None:
    result = hadolint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""
    # The linter really lints: an unpinned base and a root user are caught.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install flask\nCMD python app.py\n")
    flagged = hadolint(bad)
    assert flagged.returncode == 1
    for rule in ("DL3006", "DL3013", "DL3042", "DL3025"):
        assert rule in flagged.stdout


def test_image_is_slim_python_311_non_root_and_copies_what_dockerignore_keeps() -> None:
    commands = dockerfile.parse_file(str(DOCKERFILE))
    args = dict(c.value[0].partition("=")[::2] for c in commands if c.cmd == "ARG")
    assert args["PYTHON_IMAGE"].startswith("python:3.11-slim")
    stage = final_stage()
    assert instruction(stage, "FROM").value == ("${PYTHON_IMAGE}",)
    user = instruction(stage, "USER").value[0]
    # Numeric, so that Kubernetes can check runAsNonRoot without reading /etc/passwd.
    assert user.split(":")[0].isdigit() and int(user.split(":")[0]) != 0
    kept = {
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    copied = {
        source.rstrip("/")
        for c in commands
        if c.cmd == "COPY" and not c.flags
        for source in c.value[:-1]
    }
    assert copied == kept
    assert all((ROOT / path).exists() for path in kept)


def image_env(stage: list[dockerfile.Command], home: Path, port: int) -> dict[str, str]:
    """The final stage's ENV, with the image's paths mapped onto this machine's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIPESERVE_", "PYTHON"))}
    for command in stage:
        if command.cmd == "ENV":
            pairs = command.value
            for key, value in zip(pairs[::2], pairs[1::2], strict=True):
                value = value.replace("$PATH", env["PATH"]).replace("/opt/venv/bin", str(BIN))
                env[key] = value
    assert env["PIPESERVE_HOST"] == "0.0.0.0"
    assert env["PIPESERVE_PORT"] == instruction(stage, "EXPOSE").value[0]
    env["PIPESERVE_HOME"] = str(home)
    env["PIPESERVE_PORT"] = str(port)
    return env


def test_image_command_serves_and_its_healthcheck_passes(tmp_path: Path) -> None:
    stage = final_stage()
    workdir = Path(instruction(stage, "WORKDIR").value[0])
    app = tmp_path / workdir.name
    for command in stage:
        if command.cmd == "COPY" and not command.flags:
            source, target = command.value
            shutil.copytree(
                ROOT / source, app / target, ignore=shutil.ignore_patterns("__pycache__")
            )
    (tmp_path / "home").mkdir()
    port = free_port()
    env = image_env(stage, tmp_path / "home", port)
    argv = [*instruction(stage, "ENTRYPOINT").value, *instruction(stage, "CMD").value]
    healthcheck = instruction(stage, "HEALTHCHECK")
    assert healthcheck.value[0] == "CMD"
    probe = list(healthcheck.value[1:])

    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            argv, cwd=app, env=env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
    server = ServerProcess(f"http://127.0.0.1:{port}", port, proc, log_path)
    try:
        info = server.wait_for("/ready", timeout=60)
        assert info.json() == {"status": "ready", "store": "ok"}
        with server.client() as http:
            assert http.get("/info").json()["pipeline_name"] == "training_pipeline"
        healthy = subprocess.run(probe, env=env, capture_output=True, text=True, timeout=30)
        assert healthy.returncode == 0, healthy.stderr
    finally:
        assert server.stop() == 0, server.logs()
    down = subprocess.run(probe, env=env, capture_output=True, text=True, timeout=30)
    assert down.returncode != 0 and "Connection refused" in down.stderr
