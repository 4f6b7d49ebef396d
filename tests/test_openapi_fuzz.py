"""Schemathesis against /openapi.json: no 5xx, no answer that breaks the schema."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import ServerFactory


def test_schemathesis_finds_no_server_error(servers: ServerFactory, tmp_path: Path) -> None:
    # etl has what a schema can get wrong: a required parameter, a constrained one, several
    # outputs, step overrides and `until`. The stateful phase adds minutes and no route.
    server = servers.start("tests.sample_pipelines:etl", "--poll-interval", "0.2")
    # A 504 is /invoke's answer to a caller's own deadline (`"timeout": 0.01` is a valid
    # body) when the run takes longer, as it may on a loaded machine; any other 5xx fails.
    (tmp_path / "schemathesis.toml").write_text(
        "[[operations]]\n"
        'include-path = "/invoke"\n'
        'include-method = "POST"\n'
        'checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "504"]\n'
    )
    result = subprocess.run(
        [
            Path(sys.executable).with_name("schemathesis"),
            "run",
            f"{server.url}/openapi.json",
            "--checks", "not_a_server_error,response_schema_conformance,status_code_conformance",
            "--max-examples", "30",
            "--phases", "examples,coverage,fuzzing",
            "--seed", "1",
            "--request-timeout", "10",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
