"""Structured logs: a JSON line per request with its request id; step lines by level."""

from __future__ import annotations

import io
import json
import logging

import httpx

from service.observe.logs import ACCESS, configure_logging, log_access
from tests.conftest import ServerFactory


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_one_json_line_per_request_with_request_id(servers: ServerFactory) -> None:
    server = servers.start("tests.sample_pipelines:failing")
    ok = httpx.post(server.url + "/invoke", json={}, headers={"X-Request-ID": "req-42"})
    assert ok.headers["x-request-id"] == "req-42"
    made = httpx.get(server.url + "/info")
    assert len(made.headers["x-request-id"]) == 16
    httpx.get(server.url + "/health")
    server.stop()
    lines = json_lines(server.logs())
    access = [line for line in lines if line["logger"] == "pipeserve.access"]
    assert [(a["method"], a["path"], a["status"]) for a in access] == [
        ("POST", "/invoke", 500),
        ("GET", "/info", 200),
    ]
    first = access[0]
    assert first["request_id"] == "req-42"
    assert first["run_id"] and first["level"] == "info"
    assert isinstance(first["duration"], float) and "time" in first
    failure = next(line for line in lines if line["logger"] == "pipeserve.runner")
    assert failure["level"] == "error" and failure["step"] == "explode"
    assert failure["run_id"] == first["run_id"]
    assert "ValueError: boom" in str(failure["traceback"])


def test_debug_level_logs_step_start_and_finish(servers: ServerFactory) -> None:
    server = servers.start("tests.sample_pipelines:etl", "--log-level", "debug")
    httpx.post(server.url + "/invoke", json={"parameters": {"source": "s"}}).raise_for_status()
    server.stop()
    steps = [
        (line["message"], line["step"])
        for line in json_lines(server.logs())
        if line["logger"] == "pipeserve.runner"
    ]
    assert ("step started", "load") in steps and ("step finished", "summarize") in steps


def test_console_format_and_no_access_log(servers: ServerFactory) -> None:
    server = servers.start(
        "tests.sample_pipelines:echo", "--log-format", "console", "--no-access-log"
    )
    httpx.post(server.url + "/invoke", json={}).raise_for_status()
    server.stop()
    logs = server.logs()
    assert not json_lines(logs)
    assert "pipeserve.app: ready" in logs
    assert "POST /invoke" not in logs


def test_access_line_fast_path_writes_what_the_formatter_would() -> None:
    """The access line skips the logging machinery for our own handler: same line."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    configure_logging("info", "json")
    handler = root.handlers[0]
    buffer = io.StringIO()
    handler.setStream(buffer)  # type: ignore[attr-defined]
    try:
        log_access("POST", "/invoke", 200, 0.0012345, "run-1", "req-1")
        ACCESS.addFilter(lambda record: True)  # a filter: the real LogRecord path
        try:
            log_access("POST", "/invoke", 200, 0.0012345, "run-1", "req-1")
        finally:
            ACCESS.filters.clear()
        handler.flush()
        fast, slow = (json.loads(line) for line in buffer.getvalue().splitlines())
        assert fast.pop("time") <= slow.pop("time")
        assert fast == slow
        assert fast["message"] == "POST /invoke 200" and fast["duration"] == 0.001234
    finally:
        for h in root.handlers:
            h.close()
        root.handlers[:], level = saved
        root.setLevel(level)
