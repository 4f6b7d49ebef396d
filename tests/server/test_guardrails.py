"""Auth keys, limits, timeouts and CORS on a real server."""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx

from service.auth import generate_key, hash_key
from tests.conftest import ROOT, ServerFactory, server_env


def cli(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-P", "-m", "service", *args],
        cwd=ROOT,
        env=server_env({"PIPESERVE_HOME": str(home)}),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_keys_lifecycle_with_a_running_server(servers: ServerFactory, tmp_path: Path) -> None:
    server = servers.start("tests.sample_pipelines:echo", env={"PIPESERVE_HOME": str(tmp_path)})
    # No key yet: auth is off.
    assert httpx.post(server.url + "/invoke", json={}).status_code == 200

    created = cli("keys", "create", "--name", "ci", home=tmp_path)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert created.stdout == key + "\n"  # the key alone on stdout
    assert key.startswith("psk_") and key not in created.stderr
    stored = (tmp_path / "auth_keys.json").read_text()
    assert key not in stored and hash_key(key) in stored
    assert (tmp_path / "auth_keys.json").stat().st_mode & 0o777 == 0o600
    second = cli("keys", "create", "--name", "rotation", home=tmp_path).stdout.strip()

    listed = cli("keys", "list", home=tmp_path)
    assert [line.split("\t")[0] for line in listed.stdout.splitlines()] == ["ci", "rotation"]
    assert key not in listed.stdout

    time.sleep(1.2)  # the server looks at the keys file at most once a second
    denied = httpx.post(server.url + "/invoke", json={})
    assert denied.status_code == 401
    assert denied.headers["www-authenticate"].startswith("Bearer")
    assert denied.json()["error"]["type"] == "unauthorized"
    for headers in (
        {"Authorization": f"Bearer {key}"},
        {"X-API-Key": key},
        {"X-AUTH-TOKEN": second},
    ):
        assert httpx.post(server.url + "/invoke", json={}, headers=headers).status_code == 200
    wrong = httpx.post(server.url + "/invoke", json={}, headers={"X-API-Key": key + "x"})
    assert wrong.status_code == 401 and "not valid" in wrong.json()["error"]["message"]
    # Probes stay open; everything else is closed.
    assert httpx.get(server.url + "/health").status_code == 200
    assert httpx.get(server.url + "/ready").status_code == 200
    assert httpx.get(server.url + "/info").status_code == 401
    assert httpx.get(server.url + "/metrics").status_code == 200  # metrics_auth is off

    assert cli("keys", "revoke", "ci", home=tmp_path).returncode == 0
    time.sleep(1.2)
    assert (
        httpx.post(server.url + "/invoke", json={}, headers={"X-API-Key": key}).status_code == 401
    )
    assert (
        httpx.post(server.url + "/invoke", json={}, headers={"X-API-Key": second}).status_code
        == 200
    )
    missing = cli("keys", "revoke", "ci", home=tmp_path)
    assert missing.returncode == 2 and "no key named 'ci'" in missing.stderr
    # A key is never logged.
    assert key not in server.logs() and second not in server.logs()


def test_key_hashes_setting_and_metrics_auth(servers: ServerFactory, tmp_path: Path) -> None:
    key = generate_key()
    server = servers.start(
        "tests.sample_pipelines:echo",
        "--metrics-auth",
        env={"PIPESERVE_HOME": str(tmp_path), "PIPESERVE_AUTH_KEY_HASHES": f"k8s:{hash_key(key)}"},
    )
    assert httpx.get(server.url + "/metrics").status_code == 401
    ok = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {key}"})
    assert ok.status_code == 200 and "pipeserve_build_info" in ok.text


def test_bad_key_hash_setting_is_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-P", "-m", "service", "serve", "tests.sample_pipelines:echo"],
        cwd=ROOT,
        env=server_env({"PIPESERVE_AUTH_KEY_HASHES": "k8s:md5:abc"}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "auth_key_hashes" in result.stderr


def test_generate_auth_key_prints_it_once(servers: ServerFactory, tmp_path: Path) -> None:
    server = servers.start(
        "tests.sample_pipelines:echo", "--generate-auth-key", env={"PIPESERVE_HOME": str(tmp_path)}
    )
    first_line = server.logs().splitlines()[0]
    assert first_line.startswith("psk_")
    key = first_line.strip()
    assert server.logs().count(key) == 1
    assert httpx.post(server.url + "/invoke", json={}).status_code == 401
    ok = httpx.post(server.url + "/invoke", json={}, headers={"Authorization": f"Bearer {key}"})
    assert ok.status_code == 200


def test_timed_out_sync_step_keeps_its_slot_until_its_thread_ends(servers: ServerFactory) -> None:
    server = servers.start(
        "tests.sample_pipelines:sleepy",
        "--max-concurrency", "1", "--queue-timeout", "0.2", "--timeout", "0.3",
    )  # fmt: skip
    start = time.perf_counter()
    timed_out = httpx.post(server.url + "/invoke", json={"parameters": {"seconds": 2.0}})
    assert timed_out.status_code == 504
    body = timed_out.json()
    # Answered at the deadline, while the 2 s step still ran.
    assert body["metadata"]["steps"]["sleep_sync"]["status"] == "running"
    assert body["error"]["type"] == "timeout"
    assert body["error"]["step"] == "sleep_sync"
    assert body["metadata"]["status"] == "timed_out"
    # The step's thread still runs: the one slot is still taken, so the limit stays true.
    busy = httpx.post(server.url + "/invoke", json={"parameters": {"seconds": 0.01}})
    assert busy.status_code == 503
    assert busy.headers["retry-after"] == "1"
    assert busy.json()["error"]["type"] == "unavailable"
    # The server stays responsive meanwhile.
    assert httpx.get(server.url + "/health").status_code == 200
    # Once the thread has ended the slot is free again.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        again = httpx.post(server.url + "/invoke", json={"parameters": {"seconds": 0.01}})
        if again.status_code == 200:
            break
        time.sleep(0.1)
    assert again.status_code == 200
    assert time.perf_counter() - start >= 1.9


def test_request_timeout_within_the_maximum(servers: ServerFactory) -> None:
    server = servers.start("tests.sample_pipelines:sleepy", "--max-timeout", "5")
    too_long = httpx.post(server.url + "/invoke", json={"timeout": 10})
    assert too_long.status_code == 422
    assert too_long.json()["error"]["errors"][0]["loc"] == ["timeout"]
    short = httpx.post(
        server.url + "/invoke", json={"timeout": 0.05, "parameters": {"seconds": 0.5}}
    )
    assert short.status_code == 504


def test_at_capacity_answers_503_with_retry_after(servers: ServerFactory) -> None:
    server = servers.start(
        "tests.sample_pipelines:sleepy", "--max-concurrency", "2", "--queue-timeout", "0.1"
    )

    def call(_: int) -> httpx.Response:
        return httpx.post(server.url + "/invoke", json={"parameters": {"seconds": 1.0}}, timeout=30)

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(call, range(6)))
    codes = sorted(r.status_code for r in responses)
    assert codes.count(200) == 2 and codes.count(503) == 4
    assert all(r.headers.get("retry-after") for r in responses if r.status_code == 503)


def test_body_size_and_json_depth_limits(servers: ServerFactory) -> None:
    server = servers.start(
        "tests.sample_pipelines:etl", "--max-body-bytes", "2000", "--max-json-depth", "8"
    )
    big = {"parameters": {"source": "x" * 5000}}
    too_big = httpx.post(server.url + "/invoke", json=big)
    assert too_big.status_code == 413
    assert too_big.json()["error"]["type"] == "payload_too_large"

    def chunks() -> object:
        yield b'{"parameters": {"source": "'
        for _ in range(10):
            yield b"y" * 500
        yield b'"}}'

    chunked = httpx.post(server.url + "/invoke", content=chunks())  # type: ignore[arg-type]
    assert chunked.status_code == 413

    deep: object = "leaf"
    for _ in range(20):
        deep = [deep]
    too_deep = httpx.post(
        server.url + "/invoke", json={"parameters": {"source": "x", "limit": deep}}
    )
    assert too_deep.status_code == 400
    assert "nests deeper" in too_deep.json()["error"]["message"]
    # Brackets inside strings do not count.
    brackets = httpx.post(server.url + "/invoke", json={"parameters": {"source": "[[[[[[[[[[[["}})
    assert brackets.status_code == 200
    assert httpx.get(server.url + "/health").status_code == 200


def test_cors_by_setting(servers: ServerFactory) -> None:
    server = servers.start("tests.sample_pipelines:echo", "--cors-origins", "https://app.example")
    preflight = httpx.options(
        server.url + "/invoke",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,authorization",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    other = httpx.post(server.url + "/invoke", json={}, headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_keys_file_holds_only_hashes(tmp_path: Path) -> None:
    result = cli("keys", "create", home=tmp_path)
    document = json.loads((tmp_path / "auth_keys.json").read_text())
    (record,) = document["keys"]
    assert set(record) == {"name", "hash", "created_at"}
    assert record["name"] == "key-1"
    assert record["hash"] == hash_key(result.stdout.strip())
