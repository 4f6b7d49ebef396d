"""Schemathesis against /openapi.json, every check, with auth off and on: no 5xx, no answer
that breaks the schema, no schema-valid request refused and no invalid one accepted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.auth import generate_key, hash_key
from tests.conftest import ROOT, ServerFactory

# A 504 is /invoke's answer to a caller's own deadline (`"timeout": 0.01` is a valid body)
# when the run takes longer, as it may on a loaded machine; any other 5xx fails.
# The coverage phase makes a `cursor` from its pattern alone: a string of that shape the
# server did not give out is refused (422). The fuzzing phase makes real ones (the hooks).
CONFIG = """\
[[operations]]
include-path = "/invoke"
include-method = "POST"
checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "504"]

[[operations]]
include-operation-id = "list_runs"
phases.coverage.checks.positive_data_acceptance.expected-statuses = [
    "2xx", "3xx", "401", "403", "404", "409", "429", "5xx", "422",
]
"""


# Two schemathesis runs of up to 240 s each: 47 s together on an idle machine, but past the
# suite's 120 s once in CI with both cores loaded by the other workers (the worker ended).
@pytest.mark.timeout(500)
def test_schemathesis_finds_nothing_with_auth_off_and_on(
    servers: ServerFactory, tmp_path: Path
) -> None:
    # etl has what a schema can get wrong: a required parameter, a constrained one, several
    # outputs, step overrides and `until`. The stateful phase adds minutes and no route.
    key = generate_key()
    open_server = servers.start("tests.sample_pipelines:etl", "--poll-interval", "0.2")
    closed_server = servers.start(
        "tests.sample_pipelines:etl", "--poll-interval", "0.2",
        env={"PIPESERVE_AUTH_KEY_HASHES": f"fuzz:{hash_key(key)}"},
    )  # fmt: skip
    (tmp_path / "schemathesis.toml").write_text(CONFIG)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks",
    }
    # One after the other: each keeps a core busy.
    for url, auth in (
        (open_server.url, []),
        (closed_server.url, ["-H", f"Authorization: Bearer {key}"]),
    ):
        result = subprocess.run(
            [
                Path(sys.executable).with_name("schemathesis"),
                "run",
                f"{url}/openapi.json",
                "--checks", "all",
                "--max-examples", "30",
                "--phases", "examples,coverage,fuzzing",
                "--seed", "1",
                "--request-timeout", "10",
                *auth,
            ],
            capture_output=True,
            text=True,
            timeout=240,
            cwd=tmp_path,
            env=env,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
