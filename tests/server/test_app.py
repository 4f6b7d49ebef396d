"""The HTTP app, served for real: /invoke, probes, /info, /openapi.json and errors."""

from __future__ import annotations

import concurrent.futures
import itertools
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.server.schema import InvokeFailure, InvokeResponse
from tests.conftest import ServerFactory, ServerProcess

METADATA_FIELDS = {
    "deployment_name", "deployment_id", "pipeline_name", "run_id", "run_name",
    "parameters_used", "started_at", "finished_at", "steps",
}  # fmt: skip


@pytest.fixture(scope="module")
def training(module_servers: ServerFactory) -> ServerProcess:
    return module_servers.start(
        "pipelines.training:training_pipeline", "--name", "training-service"
    )


@pytest.fixture(scope="module")
def etl(module_servers: ServerFactory) -> ServerProcess:
    return module_servers.start("tests.sample_pipelines:etl")


def test_reference_curl_call_answers_outputs_and_metadata(training: ServerProcess) -> None:
    # The request of the reference doc ("Invoking the Deployment"), verbatim.
    body = {
        "parameters": {
            "data_url": "s3://production-bucket/latest-data.csv",
            "model_type": "gradient_boosting",
        }
    }
    response = httpx.post(training.url + "/invoke", json=body, timeout=60)
    assert response.status_code == 200, response.text
    answer = response.json()
    InvokeResponse.model_validate(answer)
    assert answer["success"] is True
    assert answer["error"] is None
    assert isinstance(answer["outputs"]["metrics"]["accuracy"], float)
    assert 0.5 < answer["outputs"]["metrics"]["accuracy"] <= 1.0
    assert answer["outputs"]["metrics"]["model_type"] == "gradient_boosting"
    assert answer["execution_time"] > 0
    metadata = answer["metadata"]
    assert METADATA_FIELDS <= set(metadata)
    assert metadata["deployment_name"] == "training-service"
    assert metadata["pipeline_name"] == "training_pipeline"
    uuid.UUID(metadata["run_id"])
    uuid.UUID(metadata["deployment_id"])
    assert metadata["parameters_used"] == body["parameters"]
    assert datetime.fromisoformat(metadata["started_at"]) <= datetime.fromisoformat(
        metadata["finished_at"]
    )
    assert list(metadata["steps"]) == ["load_data", "preprocess", "train_and_evaluate"]
    for record in metadata["steps"].values():
        assert record["status"] == "completed"
        assert record["duration"] >= 0


def test_defaults_fill_parameters_used(training: ServerProcess) -> None:
    answer = httpx.post(training.url + "/invoke", json={}, timeout=60).json()
    assert answer["metadata"]["parameters_used"] == {
        "data_url": "s3://example-bucket/data.csv",
        "model_type": "random_forest",
    }
    # An empty body is the same as {}.
    empty = httpx.post(training.url + "/invoke", content=b"", timeout=60)
    assert empty.status_code == 200


def test_step_parameter_override_in_zenml_form(training: ServerProcess) -> None:
    body = {"steps": {"train_and_evaluate": {"parameters": {"model_type": "gradient_boosting"}}}}
    answer = httpx.post(training.url + "/invoke", json=body, timeout=60).json()
    assert answer["outputs"]["metrics"]["model_type"] == "gradient_boosting"


def test_thirty_two_concurrent_sync_invocations_overlap(servers: ServerFactory) -> None:
    server = servers.start("tests.sample_pipelines:sleepy")
    with server.client() as client:
        client.post("/invoke", json={"parameters": {"seconds": 0.2}}).raise_for_status()
        one_start = time.perf_counter()
        client.post("/invoke", json={"parameters": {"seconds": 0.2}}).raise_for_status()
        one = time.perf_counter() - one_start

    # Steps of 1 s: long beside the time a loaded machine takes to send 32 requests (with
    # 0.2 s steps, one full run here saw only 15 overlap: the requests came in slowly).
    def call(_: int) -> httpx.Response:
        return httpx.post(server.url + "/invoke", json={"parameters": {"seconds": 1.0}}, timeout=30)

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        start = time.perf_counter()
        responses = list(pool.map(call, range(32)))
        wall = time.perf_counter() - start
    assert all(r.status_code == 200 for r in responses)
    threads = {r.json()["outputs"]["thread"] for r in responses}
    # How many steps slept at once, from the steps' own start times and durations: unlike
    # the wall time, this does not depend on how fast a loaded machine sends the requests.
    moments = sorted(
        (t, +1 if start else -1)
        for r in responses
        for step in [r.json()["metadata"]["steps"]["sleep_sync"]]
        for t, start in [
            (datetime.fromisoformat(step["started_at"]).timestamp(), True),
            (datetime.fromisoformat(step["started_at"]).timestamp() + step["duration"], False),
        ]
    )
    overlap = max(itertools.accumulate(change for _, change in moments))
    print(
        f"one invocation: {one:.3f}s; 32 concurrent: {wall:.3f}s; "
        f"{len(threads)} threads; {overlap} steps at once at most"
    )
    assert overlap >= 24
    # Run one after another they would take 32 x 1 = 32 s.
    assert wall < 16
    # Every invocation has its own run id: no state is shared between them.
    assert len({r.json()["metadata"]["run_id"] for r in responses}) == 32


def test_independent_async_branches_run_concurrently(servers: ServerFactory) -> None:
    server = servers.start("tests.sample_pipelines:two_branches")
    start = time.perf_counter()
    response = httpx.post(server.url + "/invoke", json={"parameters": {"seconds": 0.3}}, timeout=30)
    wall = time.perf_counter() - start
    answer = response.json()
    assert answer["outputs"] == {"joined": "left+right"}
    steps = answer["metadata"]["steps"]
    left_start = datetime.fromisoformat(steps["left"]["started_at"]).timestamp()
    right_start = datetime.fromisoformat(steps["right"]["started_at"]).timestamp()
    # Each started before the other had finished.
    assert right_start < left_start + steps["left"]["duration"]
    assert left_start < right_start + steps["right"]["duration"]
    print(f"two 0.3 s branches: {answer['execution_time']:.3f}s in the runner, {wall:.3f}s wall")
    assert answer["execution_time"] < 0.55


def test_until_runs_only_the_needed_steps(etl: ServerProcess) -> None:
    body = {"parameters": {"source": "db", "limit": 4}, "until": "scale"}
    answer = httpx.post(etl.url + "/invoke", json=body).json()
    assert answer["outputs"] == {"scaled": [0, 2, 4, 6]}
    assert list(answer["metadata"]["steps"]) == ["load", "scale"]


def test_full_run_and_overrides(etl: ServerProcess) -> None:
    body = {
        "parameters": {"source": "db", "limit": 4, "label": "total"},
        "steps": {"scale": {"parameters": {"factor": 3}}, "load": {"parameters": {"limit": 2}}},
    }
    answer = httpx.post(etl.url + "/invoke", json=body).json()
    # load's own override (limit=2) wins over the pipeline parameter (4).
    assert answer["outputs"] == {
        "summary": {"label": "total", "total": 3, "count": 2},
        "evens": [0],
    }
    assert answer["metadata"]["parameters_used"] == {"source": "db", "limit": 4, "label": "total"}


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"parameters": {"source": "db", "limit": "many"}}, ["parameters", "limit"]),
        ({"parameters": {"source": "db", "nope": 1}}, ["parameters", "nope"]),
        ({"parameters": {}}, ["parameters", "source"]),
        ({"parameters": {"source": "db"}, "steps": {"ghost": {}}}, ["steps", "ghost"]),
        (
            {"parameters": {"source": "db"}, "steps": {"scale": {"parameters": {"rows": [1]}}}},
            ["steps", "scale", "parameters", "rows"],
        ),
        ({"parameters": {"source": "db"}, "until": "ghost"}, ["until"]),
        ({"parameters": {"source": "db"}, "extra": True}, ["extra"]),
        ({"parameters": {"source": "db"}, "timeout": -1}, ["timeout"]),
        ([1, 2], []),
    ],
)
def test_bad_requests_answer_422_with_field_errors(
    etl: ServerProcess, body: object, where: list[str]
) -> None:
    response = httpx.post(etl.url + "/invoke", json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert response.json()["success"] is False
    assert error["type"] == "validation_error"
    assert where in [e["loc"] for e in error["errors"]]


def test_malformed_json_answers_400(etl: ServerProcess) -> None:
    response = httpx.post(
        etl.url + "/invoke",
        content=b'{"parameters": ',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "malformed_json"
    # The server goes on serving.
    assert httpx.post(etl.url + "/invoke", json={"parameters": {"source": "x"}}).status_code == 200


def test_failing_step_answers_500_without_traceback(servers: ServerFactory) -> None:
    server = servers.start("tests.sample_pipelines:failing")
    response = httpx.post(server.url + "/invoke", json={"parameters": {"message": "bad input"}})
    assert response.status_code == 500
    answer = response.json()
    InvokeFailure.model_validate(answer)
    assert answer["success"] is False
    assert answer["error"]["type"] == "ValueError"
    assert answer["error"]["step"] == "explode"
    assert "bad input" in answer["error"]["message"]
    assert "traceback" not in answer["error"]
    uuid.UUID(answer["metadata"]["run_id"])
    assert answer["metadata"]["steps"]["explode"]["status"] == "failed"
    assert answer["metadata"]["steps"]["after_explode"]["status"] == "pending"
    # The log has the traceback.
    assert "Traceback" in server.logs() and "bad input" in server.logs()


def test_debug_setting_puts_the_traceback_in_the_body(servers: ServerFactory) -> None:
    server = servers.start("tests.sample_pipelines:failing", "--debug")
    answer = httpx.post(server.url + "/invoke", json={}).json()
    assert "Traceback" in answer["error"]["traceback"]


def test_unserializable_output_is_named(servers: ServerFactory) -> None:
    server = servers.start("tests.sample_pipelines:unserializable")
    response = httpx.post(server.url + "/invoke", json={})
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["type"] == "output_not_serializable"
    assert error["output"] == "opaque"
    assert "NotJSON" in error["message"]


def test_output_forms(servers: ServerFactory) -> None:
    server = servers.start("tests.sample_pipelines:forms")
    outputs = httpx.post(server.url + "/invoke", json={"parameters": {"n": 3}}).json()["outputs"]
    assert outputs == {
        "array": [0, 1, 2],
        "scalar": 1.5,
        "frame": [{"a": 0, "b": 0.0}, {"a": 1, "b": 0.5}, {"a": 2, "b": 1.0}],
        "series": {"p": 1, "q": 2},
        "model": {"x": 1, "y": 2},
        "box": {"width": 2.0, "height": 3.0},
    }


def test_unknown_route_and_method_answer_json(etl: ServerProcess) -> None:
    missing = httpx.get(etl.url + "/nope")
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "not_found"
    wrong = httpx.get(etl.url + "/invoke")
    assert wrong.status_code == 405
    assert wrong.json()["error"]["type"] == "method_not_allowed"


def test_info_describes_the_pipeline(etl: ServerProcess) -> None:
    info = httpx.get(etl.url + "/info").json()
    assert info["pipeline_name"] == "etl"
    assert info["deployment_name"] == "etl"
    assert [s["name"] for s in info["steps"]] == ["load", "scale", "split", "summarize"]
    assert ["load", "scale"] in info["edges"] and ["split", "summarize"] in info["edges"]
    assert info["parameters_schema"]["required"] == ["source"]
    assert info["parameters_schema"]["properties"]["limit"]["default"] == 3
    assert info["outputs"] == ["summary", "evens"]
    assert info["ready"] is True
    assert len(info["version"]) == 12


def test_openapi_is_built_from_the_request_models(etl: ServerProcess) -> None:
    document = httpx.get(etl.url + "/openapi.json").json()
    assert document["openapi"].startswith("3.")
    ref = document["paths"]["/invoke"]["post"]["requestBody"]["content"]["application/json"][
        "schema"
    ]["$ref"]
    request = document["components"]["schemas"][ref.split("/")[-1]]
    params_ref = request["properties"]["parameters"]["$ref"].split("/")[-1]
    assert document["components"]["schemas"][params_ref]["required"] == ["source"]
    assert {"200", "422", "500"} <= set(document["paths"]["/invoke"]["post"]["responses"])


def test_health_and_ready_follow_on_init(servers: ServerFactory) -> None:
    server = servers.start(
        "tests.sample_pipelines:slow_init", env={"TEST_INIT_SECONDS": "2"}, wait="/health"
    )
    not_ready = httpx.get(server.url + "/ready")
    assert not_ready.status_code == 503
    assert not_ready.json()["status"] == "starting"
    early = httpx.post(server.url + "/invoke", json={})
    assert early.status_code == 503 and "Retry-After" in early.headers
    server.wait_for("/ready", timeout=30)
    assert httpx.post(server.url + "/invoke", json={}).json()["outputs"] == {"state": "warm"}


def test_on_init_runs_once_per_process_and_cleanup_at_shutdown(
    servers: ServerFactory, tmp_path: Path
) -> None:
    server = servers.start(
        "tests.sample_pipelines:with_state", env={"TEST_MARKER_DIR": str(tmp_path)}
    )

    def call(_: int) -> Any:
        return httpx.post(server.url + "/invoke", json={}, timeout=30).json()

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(call, range(64)))
    pids = {a["outputs"]["state"]["pid"] for a in answers}
    assert pids == {server.proc.pid}
    assert (tmp_path / f"init-{server.proc.pid}").read_text() == "init\n"
    assert server.stop() == 0
    assert (tmp_path / f"cleanup-{server.proc.pid}").read_text() == "cleanup loaded\n"


def test_failed_on_init_runs_cleanup_and_exits_nonzero(
    servers: ServerFactory, tmp_path: Path
) -> None:
    server = servers.start(
        "tests.sample_pipelines:broken_init", env={"TEST_MARKER_DIR": str(tmp_path)}, wait=None
    )
    assert server.proc.wait(30) != 0
    assert (tmp_path / "cleanup-after-failed-init").read_text() == "cleanup\n"
    assert "cannot load the model" in server.logs()


def test_workers_each_run_on_init_once(servers: ServerFactory, tmp_path: Path) -> None:
    server = servers.start(
        "tests.sample_pipelines:with_state",
        "--workers",
        "2",
        env={"TEST_MARKER_DIR": str(tmp_path)},
    )
    server.wait_all_workers_ready()
    # A worker that is slow to start (a loaded machine) may not have run `on_init` yet
    # when 20 readiness probes in a row reached the other one.
    deadline = time.monotonic() + 30
    while len(list(tmp_path.glob("init-*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(lambda _: httpx.post(server.url + "/invoke", json={}).json(), range(64))
        )
    pids = {a["outputs"]["state"]["pid"] for a in answers}
    markers = sorted(tmp_path.glob("init-*"))
    # Two worker processes, each initialised exactly once (which answered depends on the kernel).
    assert len(markers) == 2
    assert all(m.read_text() == "init\n" for m in markers)
    assert pids <= {int(m.name.split("-")[1]) for m in markers}


def test_a_null_override_is_refused(etl: ServerProcess) -> None:
    body = {"parameters": {"source": "s"}, "steps": {"scale": {"parameters": {"factor": None}}}}
    response = httpx.post(etl.url + "/invoke", json=body)
    assert response.status_code == 422
    assert response.json()["error"]["errors"][0]["loc"] == [
        "steps",
        "scale",
        "parameters",
        "factor",
    ]
