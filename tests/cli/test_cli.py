"""The `pipeserve` command line, run as a user runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, server_env


def pipeserve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-P", "-m", "service", *args],
        cwd=ROOT,
        env=server_env(env),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_such_module:p", "cannot import module 'no_such_module': no such module"),
        ("pipelines.training:nothing", "module 'pipelines.training' has no attribute 'nothing'"),
        ("pipelines.training:load_data", "is a Step, not a pipeline"),
        ("pipelines.training", "is not a pipeline spec"),
    ],
)
def test_bad_spec_exits_nonzero_with_one_line(spec: str, message: str) -> None:
    result = pipeserve("serve", spec)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]


def test_bad_setting_is_one_clear_line() -> None:
    result = pipeserve(
        "serve", "tests.sample_pipelines:echo", env={"PIPESERVE_MAX_CONCURRENCY": "zero"}
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "max_concurrency (PIPESERVE_MAX_CONCURRENCY)" in result.stderr


def test_serve_help_lists_the_settings() -> None:
    result = pipeserve("serve", "--help")
    assert result.returncode == 0
    for flag in ("--name", "--host", "--port", "--workers", "--max-concurrency", "--timeout"):
        assert flag in result.stdout
    assert "PIPESERVE_PORT" in result.stdout


def test_unreachable_database_stops_the_server_with_one_clear_line() -> None:
    result = pipeserve(
        "serve", "tests.run_pipelines:slow", "--port", "0",
        "--database-url", "postgresql://user:hunter2@127.0.0.1:1/runs",
    )  # fmt: skip
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("pipeserve: cannot open the run store: cannot reach the database")
    assert "hunter2" not in result.stderr


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        # What the user gave cannot be used: 2.
        (["serve"], 2, "no pipeline: give MODULE:PIPELINE, or set PIPESERVE_PIPELINE"),
        (["keys", "revoke", "nothing"], 2, "no key named 'nothing' in "),
        (["keys", "create", "--name", "bad name!"], 2, "'bad name!' is not a key name"),
        (["k8s", "render", "p:q", "--name", "BAD", "--image", "x"], 2, "--name 'BAD' is not"),
        (["k8s", "render", "nosuch:p", "--name", "a", "--image", "x"], 2, "no such module"),
        (["deploy", "p:q", "--name", "a", "--workers", "0"], 2, "invalid setting: workers"),
        # Doing it failed: 1.
        (["deploy", "p:q", "--name", "bad/name"], 1, "'bad/name' is not a deployment name"),
        (["deployment", "invoke", "nothing"], 1, "no deployment named 'nothing'"),
    ],
)
def test_errors_are_one_line_and_their_exit_code(
    tmp_path: Path, args: list[str], code: int, message: str
) -> None:
    result = pipeserve(*args, env={"PIPESERVE_HOME": str(tmp_path)})
    assert result.returncode == code, result.stderr
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("pipeserve: ")
    assert message in result.stderr


def test_a_damaged_keys_file_is_one_line_for_every_key_command(tmp_path: Path) -> None:
    (tmp_path / "auth_keys.json").write_text("garbage")
    for command in (["list"], ["create"], ["revoke", "x"]):
        result = pipeserve("keys", *command, env={"PIPESERVE_HOME": str(tmp_path)})
        assert result.returncode == 2
        assert result.stderr.startswith("pipeserve: cannot read the keys file ")
        assert result.stderr.count("\n") == 1
