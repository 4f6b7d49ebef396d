"""Prometheus metrics at /metrics: names, values, several workers, a real Prometheus."""

from __future__ import annotations

import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ServerFactory, free_port, require_binary


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_metrics_count_requests_runs_steps(servers: ServerFactory) -> None:
    server = servers.start("tests.sample_pipelines:etl")
    for _ in range(3):
        httpx.post(server.url + "/invoke", json={"parameters": {"source": "s"}}).raise_for_status()
    httpx.post(server.url + "/invoke", json={"parameters": {}})  # 422
    httpx.get(server.url + "/health")
    found = samples(httpx.get(server.url + "/metrics").text)
    route = (("method", "POST"), ("route", "/invoke"))
    assert found[("pipeserve_http_requests_total", (*route, ("status", "200")))] == 3
    assert found[("pipeserve_http_requests_total", (*route, ("status", "422")))] == 1
    # Probes stay out of the request metrics.
    assert not any(labels and ("route", "/health") in labels for _, labels in found)
    assert found[("pipeserve_runs_total", (("pipeline", "etl"), ("status", "succeeded")))] == 3
    assert found[("pipeserve_invocation_duration_seconds_count", (("pipeline", "etl"),))] == 3
    step = (("pipeline", "etl"), ("step", "summarize"))
    assert found[("pipeserve_step_duration_seconds_count", step)] == 3
    assert found[("pipeserve_http_request_duration_seconds_count", (("route", "/invoke"),))] == 4
    assert ("pipeserve_http_requests_in_flight", ()) in found
    assert ("pipeserve_queue_depth", ()) in found
    assert found[("pipeserve_on_init_duration_seconds", ())] >= 0
    build = [labels for name, labels in found if name == "pipeserve_build_info"]
    assert dict(build[0])["pipeline"] == "etl"


def test_in_flight_counts_the_requests_being_served(servers: ServerFactory) -> None:
    server = servers.start("tests.sample_pipelines:sleepy")
    key = ("pipeserve_http_requests_in_flight", ())
    body = {"parameters": {"seconds": 1.0}}
    with ThreadPoolExecutor(2) as pool:
        answers = [
            pool.submit(httpx.post, server.url + "/invoke", json=body, timeout=30) for _ in range(2)
        ]
        deadline = time.monotonic() + 10
        seen = 0.0
        while seen != 2 and time.monotonic() < deadline and not answers[0].done():
            seen = samples(httpx.get(server.url + "/metrics").text)[key]
        assert seen == 2
        for answer in answers:
            answer.result().raise_for_status()
    assert samples(httpx.get(server.url + "/metrics").text)[key] == 0


def test_metrics_add_up_across_workers(servers: ServerFactory) -> None:
    server = servers.start("tests.sample_pipelines:echo", "--workers", "2")
    server.wait_all_workers_ready()
    for _ in range(20):
        httpx.post(server.url + "/invoke", json={}).raise_for_status()
    for _ in range(3):  # whichever worker answers the scrape, it reports all of them
        found = samples(httpx.get(server.url + "/metrics").text)
        assert (
            found[("pipeserve_runs_total", (("pipeline", "echo"), ("status", "succeeded")))] == 20
        )


def test_a_real_prometheus_scrapes_the_invocation_counter(
    servers: ServerFactory, tmp_path: Path
) -> None:
    prometheus = require_binary("prometheus", "prometheus")
    server = servers.start("tests.sample_pipelines:echo")
    for _ in range(5):
        httpx.post(server.url + "/invoke", json={}).raise_for_status()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n"
        "scrape_configs:\n  - job_name: pipeserve\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{server.port}']\n"
    )
    port = free_port()
    with (tmp_path / "prometheus.log").open("wb") as log:
        proc = subprocess.Popen(
            [
                prometheus,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        query = 'pipeserve_runs_total{pipeline="echo",status="succeeded"}'
        value = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and value is None:
            time.sleep(0.5)
            try:
                answer = httpx.get(
                    f"http://127.0.0.1:{port}/api/v1/query", params={"query": query}
                ).json()
            except httpx.TransportError:
                continue
            if answer.get("data", {}).get("result"):
                value = float(answer["data"]["result"][0]["value"][1])
        assert value == 5, (tmp_path / "prometheus.log").read_text()[-2000:]
    finally:
        proc.terminate()
        proc.wait(30)
