"""The requests of the reference documents, sent verbatim (../shared/reference/)."""

from __future__ import annotations

from pathlib import Path

from service.auth import generate_key, hash_key
from tests.conftest import ServerFactory
from tests.runs.test_runs import wait_status


def test_prophecy_trigger_and_status_verbatim(servers: ServerFactory, tmp_path: Path) -> None:
    key = generate_key()
    server = servers.start(
        "tests.run_pipelines:bakehouse",
        "--database-url", f"sqlite:///{tmp_path / 'runs.db'}", "--poll-interval", "0.2",
        env={"PIPESERVE_AUTH_KEY_HASHES": f"prophecy:{hash_key(key)}"},
    )  # fmt: skip
    with server.client() as http:
        # prophecy-trigger-pipeline-api.md, "Example cURL", with our key as the token.
        answer = http.post(
            "/api/trigger/pipeline",
            headers={"X-AUTH-TOKEN": key, "Content-Type": "application/json"},
            content=b"""{
  "fabricId": 33290,
  "pipelineName": "bakehouse",
  "parameters": {
    "franchise_id": "3000007"
  },
  "version": "2",
  "projectId": "41459",
  "processName": "franchise_reviews"
}""",
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["success"] is True and set(body) == {"success", "runId", "msg"}
        run_id = body["runId"]

        http.headers["X-AUTH-TOKEN"] = key
        record = wait_status(http, run_id, {"succeeded"})
        # processName ran the pipeline up to that step only.
        assert record["outputs"] == {"reviews": {"franchise_id": 3000007, "reviews": 3000007 % 7}}
        assert list(record["steps"]) == ["franchise_reviews"]

        status = http.get(f"/api/trigger/pipeline/{run_id}")
        assert status.status_code == 200
        found = status.json()
        assert found["success"] is True and found["runId"] == run_id
        assert found["runStatus"] == "SUCCEEDED" and found["pipelineName"] == "bakehouse"
        assert (found["projectId"], found["fabricId"]) == ("41459", "33290")
        # ISO 8601 with microseconds, as in the document's example.
        assert len(found["createdAt"]) == len("2025-06-17T18:01:49.275359")
        assert found["createdAt"] <= found["updatedAt"]

        # Failures keep Prophecy's shape: success false and a message.
        wrong = http.post("/api/trigger/pipeline", json={"pipelineName": "other"})
        assert wrong.status_code == 404 and wrong.json()["success"] is False
        assert "bakehouse" in wrong.json()["msg"]
        missing = http.get("/api/trigger/pipeline/MDAw-xZGYzYzc3LTYzdsSdfx--LTQ3NTQ1ZYjI2Mw==")
        assert missing.status_code == 404 and missing.json()["success"] is False
        unauthenticated = http.get(f"/api/trigger/pipeline/{run_id}", headers={"X-AUTH-TOKEN": ""})
        assert unauthenticated.status_code == 401


def test_prophecy_error_status_reports_the_message(servers: ServerFactory, tmp_path: Path) -> None:
    server = servers.start(
        "tests.run_pipelines:three_steps",
        "--database-url", f"sqlite:///{tmp_path / 'runs.db'}", "--poll-interval", "0.2",
    )  # fmt: skip
    with server.client() as http:
        run_id = http.post(
            "/api/trigger/pipeline",
            json={"pipelineName": "three_steps", "parameters": {"seconds": 0, "fail": True}},
        ).json()["runId"]
        wait_status(http, run_id, {"failed"})
        status = http.get(f"/api/trigger/pipeline/{run_id}").json()
        assert status["runStatus"] == "ERROR"
        assert status["errorMessage"] == "third step refused"


def test_zenml_snapshot_and_run_template_bodies_verbatim(
    servers: ServerFactory, tmp_path: Path
) -> None:
    training = servers.start(
        "tests.run_pipelines:training",
        "--database-url", f"sqlite:///{tmp_path / 'a.db'}", "--poll-interval", "0.2",
    )  # fmt: skip
    with training.client() as http:
        # zenml-trigger-from-external-systems-2025.md, "Using the REST API", step 3.
        answer = http.post(
            "/runs",
            headers={"accept": "application/json", "Content-Type": "application/json"},
            content=b"""{
    "run_configuration": {
      "steps": {
        "load_data": {
          "parameters": {
            "data_url": "s3://production-bucket/latest-data.csv"
          }
        },
        "train_model": {
          "parameters": {
            "model_type": "gradient_boosting"
          }
        }
      }
    }
  }""",
        )
        assert answer.status_code == 202, answer.text
        record = wait_status(http, answer.json()["run_id"], {"succeeded"})
        assert record["outputs"] == {
            "model": {
                "data": "s3://production-bucket/latest-data.csv",
                "model_type": "gradient_boosting",
            }
        }
        clash = http.post(
            "/runs", json={"steps": {}, "run_configuration": {"steps": {"load_data": {}}}}
        )
        assert clash.status_code == 422
        unknown = http.post("/runs", json={"run_configuration": {"steps": {"nope": {}}}})
        assert unknown.status_code == 422
        assert unknown.json()["error"]["errors"][0]["loc"][:3] == ["run_configuration", "steps",
                                                                   "nope"]  # fmt: skip

    template = servers.start(
        "tests.run_pipelines:training_template",
        "--database-url", f"sqlite:///{tmp_path / 'b.db'}", "--poll-interval", "0.2",
    )  # fmt: skip
    with template.client() as http:
        # zenml-run-template-rest-api.md, "A working example": the bare steps body.
        answer = http.post(
            "/runs",
            headers={"accept": "application/json", "Content-Type": "application/json"},
            content=b"""{
  "steps": {"model_trainer": {"parameters": {"model_type": "rf"}}}
}""",
        )
        assert answer.status_code == 202, answer.text
        record = wait_status(http, answer.json()["run_id"], {"succeeded"})
        assert record["outputs"] == {"model_type": "rf"}
