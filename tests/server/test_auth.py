"""Auth key primitives; auth stays on once enabled (in-process and on real servers)."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from service.auth import KeyFile, generate_key, hash_key, hash_setting, is_key_hash, matches
from service.deployments.k8s import K8sOptions, render
from service.server.app import create_app
from tests.conftest import ServerFactory, ServerProcess
from tests.server.test_guardrails import cli


def test_keys_are_long_random_and_stored_only_as_hashes() -> None:
    keys = {generate_key() for _ in range(100)}
    assert len(keys) == 100
    key = keys.pop()
    assert key.startswith("psk_") and len(key) >= 4 + 43
    digest = hash_key(key)
    assert is_key_hash(digest) and key not in digest
    assert matches(key, ["sha256:" + "0" * 64, digest])
    assert not matches(key, ["sha256:" + "0" * 64])
    assert not matches(key + "x", [digest])
    assert not is_key_hash("sha256:xyz")


# -- auth stays on once enabled (issue 10): fast, in-process -------------------------------

PROTECTED = [("GET", "/info"), ("GET", "/runs"), ("POST", "/invoke")]


def _asgi_statuses(
    tmp_path: Path, requests: list[tuple[str, str, dict[str, str]]], **settings: Any
) -> tuple[list[httpx.Response], Starlette]:
    """The answers of an in-process app (no lifespan: the edge middleware answers auth)."""
    app = create_app(
        "tests.sample_pipelines:echo",
        home=str(tmp_path),
        auth_keys_file=str(tmp_path / "auth_keys.json"),
        **settings,
    )

    async def send() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return [
                await client.request(
                    method, path, headers=headers, json={} if method == "POST" else None
                )
                for method, path, headers in requests
            ]

    return asyncio.run(send()), app


def test_an_emptied_keys_file_keeps_auth_on_and_says_no_key_is_configured(tmp_path: Path) -> None:
    file = KeyFile(tmp_path / "auth_keys.json")
    key, _ = file.create("only")
    file.revoke("only")
    answers, _ = _asgi_statuses(
        tmp_path,
        [*((m, p, {}) for m, p in PROTECTED), *((m, p, {"X-API-Key": key}) for m, p in PROTECTED)],
    )
    for answer in answers:
        assert answer.status_code == 401, answer.text
        assert "pipeserve keys create" in answer.json()["error"]["message"]


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "[]",
        '{"keys": ["x"]}',
        '{"keys": [{"name": "a"}]}',
        '{"keys": [{"name": "a", "hash": 5, "created_at": ""}]}',
    ],
)
def test_a_broken_keys_file_fails_closed_and_is_logged_once(
    tmp_path: Path, content: str, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "auth_keys.json").write_text(content)
    caplog.set_level(logging.INFO, logger="pipeserve.auth")
    requests = [(m, p, h) for m, p in PROTECTED for h in ({}, {"X-API-Key": generate_key()})]
    answers, app = _asgi_statuses(tmp_path, [*requests, ("GET", "/health", {})])
    *refused, health = answers
    assert health.status_code == 200
    for answer in refused:
        assert answer.status_code == 401, answer.text
        assert "cannot read its auth keys file" in answer.json()["error"]["message"]
    for _ in range(3):
        app.state.service.keys.refresh(force=True)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "cannot read the keys file" in errors[0].getMessage()


def test_auth_modes_required_and_off(tmp_path: Path) -> None:
    required, _ = _asgi_statuses(
        tmp_path, [*((m, p, {}) for m, p in PROTECTED), ("GET", "/health", {})], auth="required"
    )
    assert [a.status_code for a in required] == [401, 401, 401, 200]
    key, _ = KeyFile(tmp_path / "auth_keys.json").create("ci")
    off, _ = _asgi_statuses(tmp_path, [("GET", "/info", {})], auth="off")
    assert off[0].status_code == 200
    auto, _ = _asgi_statuses(tmp_path, [("GET", "/info", {}), ("GET", "/info", {"X-API-Key": key})])
    assert [a.status_code for a in auto] == [401, 200]


def test_k8s_render_with_keys_requires_auth_in_the_pods() -> None:
    base: dict[str, Any] = {"name": "t", "image": "pipeserve:dev", "pipeline": "m:p"}

    def config(**options: Any) -> dict[str, str]:
        (config_map,) = [
            o for o in render(K8sOptions(**base, **options)) if o["kind"] == "ConfigMap"
        ]
        data: dict[str, str] = config_map["data"]
        return data

    hashes = hash_setting([("ci", hash_key(generate_key()))])
    assert config(auth_key_hashes=hashes)["PIPESERVE_AUTH"] == "required"
    assert "PIPESERVE_AUTH" not in config()
    assert config(auth_key_hashes=hashes, settings={"auth": "off"})["PIPESERVE_AUTH"] == "off"


# -- the same on real servers, keys made and revoked with the CLI ---------------------------


def keys_cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = cli("keys", *args, home=home)
    assert result.returncode == 0, result.stderr
    return result


def statuses(server: ServerProcess, key: str | None) -> list[int]:
    """The statuses of the protected routes, with `key` (or none)."""
    headers = {} if key is None else {"X-API-Key": key}
    with server.client(headers=headers) as http:
        return [
            http.request(m, p, json={} if m == "POST" else None).status_code for m, p in PROTECTED
        ]


def eventually(
    check: Callable[[], bool],
    timeout: float = 5,
    failure: str = "the server did not pick up the keys file in time",
) -> None:
    """The server looks at the keys file at most once a second."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, failure
        time.sleep(0.1)


def auth_log(server: ServerProcess) -> dict[str, Any]:
    """The start-up line that says whether auth is on, and from where. Info lines reach
    the log file at the next flush of the server's log buffer (every 0.2 s): wait for it."""

    def found() -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in server.logs().splitlines() if line.startswith("{")]
        return [line for line in lines if line["logger"] == "pipeserve.auth"][:1]

    eventually(lambda: bool(found()), failure='no "pipeserve.auth" line in the log')
    (line,) = found()
    return line


def test_revoking_the_last_key_leaves_a_real_server_refusing_everything(
    servers: ServerFactory, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    server = servers.start("tests.sample_pipelines:echo", env={"PIPESERVE_HOME": str(home)})
    assert statuses(server, None) == [200, 200, 200]  # no keys file: auth is off
    key = keys_cli(home, "create", "--name", "only").stdout.strip()
    eventually(lambda: statuses(server, key) == [200] * 3 and statuses(server, None) == [401] * 3)

    revoked = keys_cli(home, "revoke", "only")
    warning = revoked.stderr
    assert "refuse every request" in warning and "pipeserve keys create" in warning
    assert "--auth off" in warning and "delete the file" in warning
    eventually(lambda: statuses(server, key) == [401] * 3)
    assert statuses(server, None) == [401] * 3
    with server.client() as http:
        assert "pipeserve keys create" in http.get("/info").json()["error"]["message"]
        assert http.get("/health").status_code == 200
        assert http.get("/ready").status_code == 200

    fresh = keys_cli(home, "create").stdout.strip()
    eventually(lambda: statuses(server, fresh) == [200] * 3)
    assert statuses(server, key) == [401] * 3
    # Revoking a key that is not the last one warns of nothing.
    keys_cli(home, "create", "--name", "spare")
    assert "warning" not in keys_cli(home, "revoke", "spare").stderr


def test_auth_required_refuses_all_but_the_public_paths_until_a_key_is_made(
    servers: ServerFactory, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    server = servers.start(
        "tests.sample_pipelines:echo", "--auth", "required", env={"PIPESERVE_HOME": str(home)}
    )
    assert statuses(server, None) == [401] * 3
    assert statuses(server, generate_key()) == [401] * 3
    with server.client() as http:
        for path in ("/health", "/ready", "/", "/docs", "/metrics"):
            assert http.get(path).status_code == 200, path
    log = auth_log(server)
    assert log["message"] == "auth is on" and log["auth"] == "required"
    key = keys_cli(home, "create").stdout.strip()
    eventually(lambda: statuses(server, key) == [200] * 3)
    assert key not in server.logs()


def test_auth_off_serves_without_a_key_even_with_keys(
    servers: ServerFactory, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    keys_cli(home, "create")
    server = servers.start(
        "tests.sample_pipelines:echo", "--auth", "off", env={"PIPESERVE_HOME": str(home)}
    )
    assert statuses(server, None) == [200] * 3
    log = auth_log(server)
    assert log["level"] == "warning" and log["auth"] == "off"


def test_a_corrupted_keys_file_fails_closed_in_a_real_server(
    servers: ServerFactory, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    key = keys_cli(home, "create").stdout.strip()
    path = home / "auth_keys.json"
    path.write_text('{"keys": [')
    server = servers.start("tests.sample_pipelines:echo", env={"PIPESERVE_HOME": str(home)})
    assert statuses(server, None) == [401] * 3
    assert statuses(server, key) == [401] * 3
    # Still broken, another way (JSON, but not keys): refused, never a 500.
    path.write_text('{"keys": [{"name": "a", "hash": 5, "created_at": ""}]}')
    time.sleep(1.2)
    for _ in range(3):
        assert statuses(server, key) == [401] * 3
        time.sleep(0.4)
    with server.client() as http:
        assert http.get("/health").status_code == 200
    errors = [line for line in server.logs().splitlines() if "cannot read the keys file" in line]
    assert len(errors) == 2, errors  # once for each broken content, not once a request
    # Repaired (deleted, then a key made): the new key works.
    path.unlink()
    fresh = keys_cli(home, "create").stdout.strip()
    eventually(lambda: statuses(server, fresh) == [200] * 3)
    eventually(lambda: "the keys file is readable again" in server.logs())  # info: batched
