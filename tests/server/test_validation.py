"""Every input is checked at the edge, with the same rules on every entry point, before
any of it reaches SQL: 4xx naming the field, never a 500 or a broken stream."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import ServerFactory, ServerProcess
from tests.runs.test_runs import FAST, read_events, wait_status

TOO_LARGE = "JSON integers must fit in 64 bits"


def start(servers: ServerFactory, database_url: str, spec: str, *args: str) -> ServerProcess:
    return servers.start(spec, "--database-url", database_url, *FAST, *args)


def only_error(response: httpx.Response, status: int) -> dict[str, Any]:
    """The one field error of a 4xx answer (in either body shape, ours or Prophecy's)."""
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["success"] is False
    errors: list[dict[str, Any]] = body["error"]["errors"]
    assert len(errors) == 1, errors
    return errors[0]


def no_server_errors(server: ServerProcess) -> None:
    logs = server.logs()
    assert "unexpected error" not in logs and " 500" not in logs, logs[-3000:]


@pytest.fixture(scope="module")
def echo(module_servers: ServerFactory) -> Iterator[httpx.Client]:
    """`echo` (an int parameter, also a step's) with a deadline of at most 5 seconds."""
    server = module_servers.start("tests.sample_pipelines:echo", *FAST, "--max-timeout", "5")
    with server.client() as http:
        yield http
    no_server_errors(server)


def finished_run(http: httpx.Client) -> str:
    """The id of a batch run of three_steps that has succeeded."""
    run_id: str = http.post("/runs", json={"parameters": {"seconds": 0}}).json()["run_id"]
    wait_status(http, run_id, {"succeeded"})
    return run_id


def cursor_of(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def test_last_event_id_is_bounded_and_the_server_streams_on(
    servers: ServerFactory, database_url: str
) -> None:
    server = start(servers, database_url, "tests.run_pipelines:three_steps")
    with server.client() as http:
        run_id = finished_run(http)
        for value in ("99999999999999999999", str(2**31), "-1", "1.5", "x", "+1", ""):
            error = only_error(
                http.get(f"/runs/{run_id}/events", headers={"Last-Event-ID": value}), 422
            )
            assert error["loc"] == ["header", "Last-Event-ID"], value
        query = http.get(f"/runs/{run_id}/events", params={"last_event_id": str(2**63)})
        assert only_error(query, 422)["loc"] == ["query", "last_event_id"]
        # The largest event id the store holds is valid: after it, nothing, and an end.
        assert read_events(http, run_id, **{"Last-Event-ID": str(2**31 - 1)}) == []
        # The server goes on streaming, this run and others.
        assert [kind for _, kind, _ in read_events(http, run_id)][-1] == "succeeded"
        other = http.post("/runs", json={"parameters": {"seconds": 0}}).json()["run_id"]
        assert [kind for _, kind, _ in read_events(http, other)][-1] == "succeeded"
        assert read_events(http, other, **{"Last-Event-ID": "7"}) == read_events(http, other)[7:]
    no_server_errors(server)


def test_forged_cursors_are_refused(servers: ServerFactory, database_url: str) -> None:
    server = start(servers, database_url, "tests.run_pipelines:three_steps")
    with server.client() as http:
        for _ in range(3):
            http.post("/invoke", json={"parameters": {"seconds": 0}})
        forged = [
            cursor_of("1e300:99999999999999999999999"),
            cursor_of("1.5:9223372036854775808"),
            cursor_of("inf:1"),
            cursor_of("nan:1"),
            cursor_of("1.5:-1"),
            cursor_of("1.5"),
            "",
            "@@",
            "A" * 129,
            cursor_of("1.5:3") + "\n",
        ]
        for cursor in forged:
            error = only_error(http.get("/runs", params={"cursor": cursor}), 422)
            assert error["loc"] == ["query", "cursor"], cursor
        # A cursor of the right shape pages on; one from the server too.
        assert http.get("/runs", params={"cursor": cursor_of("1e300:5")}).status_code == 200
        page = http.get("/runs", params={"limit": 1}).json()
        following = http.get("/runs", params={"limit": 5, "cursor": page["next_cursor"]})
        assert following.status_code == 200 and len(following.json()["runs"]) == 2
    no_server_errors(server)


def test_malformed_run_ids_are_not_found_on_every_route(
    servers: ServerFactory, database_url: str
) -> None:
    server = start(servers, database_url, "tests.run_pipelines:three_steps")
    with server.client() as http:
        real = finished_run(http)
        malformed = [
            "%00",
            "x%00y",
            "nope",
            real.upper(),
            real + "0",
            "%20" + real,
            real + "%0A",
            "0" * 5000,
        ]
        routes = [
            ("GET", "/runs/{}"),
            ("GET", "/runs/{}/events"),
            ("POST", "/runs/{}/cancel"),
            ("GET", "/api/trigger/pipeline/{}"),
        ]
        for method, route in routes:
            for run_id in malformed:
                answer = http.request(method, route.format(run_id))
                error = only_error(answer, 404)
                assert error["loc"] == ["path", "run_id"], (route, run_id)
                assert answer.json()["error"]["type"] == "not_found"
            # A run id of the right shape that names no run: 404 too, from the store.
            unknown = http.request(method, route.format("8c4f6a62-2f5e-4c1b-9d0e-3a7b5c9d1e2f"))
            assert unknown.status_code == 404, unknown.text
        assert http.get(f"/runs/{real}").json()["status"] == "succeeded"
        assert http.get("/runs").status_code == 200
    no_server_errors(server)


TIMEOUTS = [b"Infinity", b"-Infinity", b"NaN", b"1e400", str(2**100).encode(), b"true", b"false",
            b'"3"', b"6", b"5.000001", b"0.001", b"0", b"-1"]  # fmt: skip


def test_timeout_is_a_finite_number_within_the_maximum(echo: httpx.Client) -> None:
    for route in ("/invoke", "/runs"):
        for value in TIMEOUTS:
            answer = echo.post(route, content=b'{"timeout": ' + value + b"}")
            assert only_error(answer, 422)["loc"] == ["timeout"], (route, value)
        for value in (b"5", b"0.01", b"2.5", b"null"):
            answer = echo.post(route, content=b'{"timeout": ' + value + b"}")
            assert answer.status_code in (200, 202), (route, value, answer.text)
    # Prophecy's trigger takes no deadline at all.
    for value in (*TIMEOUTS, b"5"):
        answer = echo.post(
            "/api/trigger/pipeline", content=b'{"pipelineName": "echo", "timeout": ' + value + b"}"
        )
        assert only_error(answer, 422)["loc"] == ["timeout"], value
    # The schema says what the server holds to.
    schema = echo.get("/openapi.json").json()["components"]["schemas"]
    timeout = schema["EchoInvokeRequest"]["properties"]["timeout"]["anyOf"][0]
    assert timeout == {"type": "number", "minimum": 0.01, "maximum": 5.0}
    assert schema["EchoSubmitRequest"]["properties"]["timeout"]["anyOf"][0] == timeout


def test_parameters_are_of_their_json_type(echo: httpx.Client) -> None:
    for route in ("/invoke", "/runs"):
        for value in (b"true", b'"3"', b"3.5"):
            body = b'{"parameters": {"x": ' + value + b"}}"
            assert only_error(echo.post(route, content=body), 422)["loc"] == ["parameters", "x"]
        # JSON has one type of number: 3.0 is the integer 3.
        answer = echo.post(route, content=b'{"parameters": {"x": 3.0}}')
        assert answer.status_code in (200, 202), answer.text
    assert echo.post("/invoke", json={"parameters": {"x": 3.0}}).json()["outputs"] == {"y": 4}
    # Prophecy's clients send text: converted, as before.
    prophecy = echo.post(
        "/api/trigger/pipeline", json={"pipelineName": "echo", "parameters": {"x": "3"}}
    )
    assert prophecy.status_code == 200, prophecy.text


def deep(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels - 1):
        value = [value]
    return value


def test_json_depth_limit_on_every_body(echo: httpx.Client) -> None:
    bodies = {
        "/invoke": {"parameters": {"x": deep(150)}},
        "/runs": {"parameters": {"x": deep(150)}},
        "/api/trigger/pipeline": {"pipelineName": "echo", "parameters": {"x": deep(150)}},
    }
    for route, body in bodies.items():
        answer = echo.post(route, json=body)
        assert answer.status_code == 400, (route, answer.text)
        assert answer.json()["success"] is False
        assert "nests deeper than the limit of 32" in answer.json()["error"]["message"]
    # Within the limit, the parameter's type decides, as for any value.
    assert only_error(echo.post("/runs", json={"parameters": {"x": deep(20)}}), 422)["loc"] == [
        "parameters", "x",
    ]  # fmt: skip


def test_integers_beyond_64_bits_are_refused_everywhere(
    servers: ServerFactory, database_url: str
) -> None:
    server = start(servers, database_url, "tests.run_pipelines:anything")
    big, small = 2**64, -(2**63) - 1
    cases: list[tuple[str, dict[str, Any], list[Any]]] = [
        ("/invoke", {"parameters": {"value": big}}, ["parameters", "value"]),
        ("/invoke", {"parameters": {"count": big}}, ["parameters", "count"]),
        ("/invoke", {"parameters": {"value": {"a": [1, small]}}}, ["parameters", "value", "a", 1]),
        ("/invoke", {"steps": {"keep": {"parameters": {"extra": big}}}},
         ["steps", "keep", "parameters", "extra"]),
        ("/invoke", {"steps": {"keep": {"parameters": {"count": 10**30}}}},
         ["steps", "keep", "parameters", "count"]),
        ("/runs", {"parameters": {"value": big}}, ["parameters", "value"]),
        ("/runs", {"steps": {"keep": {"parameters": {"extra": [small]}}}},
         ["steps", "keep", "parameters", "extra", 0]),
        ("/runs", {"run_configuration": {"parameters": {"value": big}}},
         ["run_configuration", "parameters", "value"]),
        ("/runs", {"run_configuration": {"steps": {"keep": {"parameters": {"extra": big}}}}},
         ["run_configuration", "steps", "keep", "parameters", "extra"]),
        ("/api/trigger/pipeline", {"pipelineName": "anything", "parameters": {"value": big}},
         ["parameters", "value"]),
        ("/api/trigger/pipeline", {"pipelineName": "anything", "parameters": {"count": str(big)}},
         ["parameters", "count"]),
        ("/api/trigger/pipeline", {"pipelineName": "anything", "fabricId": big}, ["fabricId"]),
    ]  # fmt: skip
    with server.client() as http:
        for route, body, loc in cases:
            error = only_error(http.post(route, json=body), 422)
            assert error["loc"] == loc and error["type"] == "int_too_large", (route, body, error)
            assert TOO_LARGE in error["msg"]
        # The edges of the range are fine; so are long digit strings and large floats.
        edges = {"value": [2**64 - 1, -(2**63), "1" * 40, 1e300], "count": 2**63 - 1}
        answer = http.post("/invoke", json={"parameters": edges})
        assert answer.status_code == 200, answer.text
        assert answer.json()["outputs"]["kept"]["value"] == edges["value"]
        queued = http.post("/runs", json={"parameters": edges}).json()["run_id"]
        record = wait_status(http, queued, {"succeeded"})
        assert record["parameters_used"]["value"] == edges["value"]
        # The store is whole: listings answer, and a plain /invoke is recorded as ever.
        assert http.get("/runs").status_code == 200
        plain = http.post("/invoke", json={"parameters": {"value": 1}}).json()
        run_id = plain["metadata"]["run_id"]
        time.sleep(0.3)  # past the write-behind buffer: from the store
        assert http.get(f"/runs/{run_id}").json()["status"] == "succeeded"
        listed = [r["run_id"] for r in http.get("/runs").json()["runs"]]
        assert run_id in listed and queued in listed
    no_server_errors(server)


def test_options_and_other_methods_on_runs_say_get_and_post(echo: httpx.Client) -> None:
    for method in ("OPTIONS", "DELETE", "PUT"):
        answer = echo.request(method, "/runs")
        assert answer.status_code == 405
        allowed = {m.strip() for m in answer.headers["allow"].split(",")}
        assert {"GET", "POST"} <= allowed <= {"GET", "HEAD", "POST"}, answer.headers["allow"]
    assert echo.get("/runs").status_code == 200


def test_openapi_states_the_limits_the_server_holds_to(echo: httpx.Client) -> None:
    document = echo.get("/openapi.json").json()
    paths = document["paths"]

    def parameter(path: str, method: str, name: str) -> dict[str, Any]:
        found = [p for p in paths[path][method]["parameters"] if p["name"] == name]
        assert len(found) == 1, (path, method, name)
        schema: dict[str, Any] = found[0]["schema"]
        return schema

    for path, method in [("/runs/{run_id}", "get"), ("/runs/{run_id}/events", "get"),
                         ("/runs/{run_id}/cancel", "post"),
                         ("/api/trigger/pipeline/{run_id}", "get")]:  # fmt: skip
        run_id = parameter(path, method, "run_id")
        assert run_id["maxLength"] == run_id["minLength"] == 36
        assert run_id["pattern"].startswith("^[0-9a-f]{8}-")
    event_id = {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}
    assert parameter("/runs/{run_id}/events", "get", "Last-Event-ID") == event_id
    assert parameter("/runs/{run_id}/events", "get", "last_event_id") == event_id
    assert parameter("/runs", "get", "cursor")["pattern"] == "^[A-Za-z0-9_-]{1,128}$"
    limit = parameter("/runs", "get", "limit")
    assert (limit["minimum"], limit["maximum"]) == (1, 500)
    key = parameter("/runs", "post", "Idempotency-Key")
    assert (key["minLength"], key["maxLength"]) == (1, 255)
    x = document["components"]["schemas"]["EchoParameters"]["properties"]["x"]
    assert (x["minimum"], x["maximum"]) == (-(2**63), 2**64 - 1)
    # What the server refuses for a field, the schema refuses too.
    submit = document["components"]["schemas"]["EchoSubmitRequest"]
    assert submit["properties"]["webhook_url"]["type"] == "null"  # no webhook secret set
    assert len(submit["not"]["anyOf"]) == 2  # steps or parameters given twice
    assert json.dumps(document)  # plain JSON


def test_idempotency_key_length_names_the_header(echo: httpx.Client) -> None:
    for key in ("", "k" * 256):
        answer = echo.post("/runs", json={}, headers={"Idempotency-Key": key})
        assert only_error(answer, 400)["loc"] == ["header", "Idempotency-Key"]
    assert echo.post("/runs", json={}, headers={"Idempotency-Key": "k" * 255}).status_code == 202
