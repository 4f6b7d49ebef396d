"""Request validation: RequestModels.parse_invoke on an etl-like body."""

from __future__ import annotations

from typing import Any

from bench import pipelines as bp
from service.sdk.requests import RequestModels


def test_parse_invoke_etl_body(benchmark: Any) -> None:
    models = RequestModels(bp.etl)
    data = benchmark(models.parse_invoke, bp.ETL_BODY)
    assert data.parameters == {"source": "s3://bucket/data.csv", "limit": 500, "label": "sum"}
    assert data.step_parameters == {"clean": {"drop_negative": False}}
    assert data.timeout == 30
