"""The workloads: what pipeserve serves, which floor it is measured against, and how."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from service.auth import generate_key, hash_key

ECHO_BODY = json.dumps({"parameters": {"x": 1}})
INFERENCE_BODY = json.dumps(
    {"parameters": {"rows": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]}}
)
RECORDING_OFF = {"PIPESERVE_RECORD_INVOCATIONS": "false"}


def recording_on(workdir: Path) -> dict[str, str]:
    return {
        "PIPESERVE_RECORD_INVOCATIONS": "true",
        "PIPESERVE_DATABASE_URL": f"sqlite:///{workdir / 'runs.db'}",
    }


@dataclass(frozen=True)
class Workload:
    name: str
    what: str
    spec: str  # the pipeline pipeserve serves, MODULE:ATTRIBUTE
    floor: str  # the floor app it is measured against (bench/floor.py FLOORS)
    connections: tuple[int, ...]
    body: str = ECHO_BODY
    env: dict[str, str] = field(default_factory=dict)
    key: str | None = None  # an auth key wrk sends; its hash goes in `env`


def all_workloads(workdir: Path) -> list[Workload]:
    key = generate_key()
    return [
        Workload(
            "echo-def",
            "(a) one `def` step returning x + 1; floor: the same function via run_in_threadpool",
            "bench.pipelines:echo_def",
            "echo-def",
            (1, 8, 32),
            env=RECORDING_OFF,
        ),
        Workload(
            "echo-async",
            "(a) one `async def` step returning x + 1; floor: the same coroutine awaited",
            "bench.pipelines:echo_async",
            "echo-async",
            (1, 8, 32),
            env=RECORDING_OFF,
        ),
        Workload(
            "echo-def-nolog",
            "(a) echo-def with the access log off (PIPESERVE_ACCESS_LOG=false): its cost",
            "bench.pipelines:echo_def",
            "echo-def",
            (1, 8),
            env={**RECORDING_OFF, "PIPESERVE_ACCESS_LOG": "false"},
        ),
        Workload(
            "chain20",
            "(b) a chain of 20 `def` steps; floor: 20 calls in one run_in_threadpool",
            "bench.pipelines:chain20",
            "chain20",
            (1, 8, 32),
            env=RECORDING_OFF,
        ),
        Workload(
            "fanout",
            "(c) 8 `async` steps each awaiting 50 ms; floor: asyncio.gather of the same",
            "bench.pipelines:fanout",
            "fanout",
            (1, 64),
            env=RECORDING_OFF,
        ),
        Workload(
            "inference",
            "(d) pipelines.inference (validate, predict: 3 rows); floor: same model, same calls",
            "pipelines.inference:inference_pipeline",
            "inference",
            (1, 8, 32),
            body=INFERENCE_BODY,
            env=RECORDING_OFF,
        ),
        Workload(
            "echo-recording",
            "(e) echo-def with run recording on (SQLite); floor: echo-def",
            "bench.pipelines:echo_def",
            "echo-def",
            (1, 8),
            env=recording_on(workdir),
        ),
        Workload(
            "echo-auth",
            "(e) echo-def with auth on (PIPESERVE_AUTH_KEY_HASHES, Bearer key); floor: no auth",
            "bench.pipelines:echo_def",
            "echo-def",
            (1, 8),
            env={**RECORDING_OFF, "PIPESERVE_AUTH_KEY_HASHES": f"bench:{hash_key(key)}"},
            key=key,
        ),
    ]
