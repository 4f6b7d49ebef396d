"""Output serialization: a response carrying a 1,000-row DataFrame (service.serialize)."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pandas as pd

from service.sdk.serialize import dumps_response

ROWS = 1000


def test_dumps_response_with_a_1000_row_frame(benchmark: Any) -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "id": np.arange(ROWS),
            "score": rng.random(ROWS),
            "label": [f"item-{i}" for i in range(ROWS)],
            "at": pd.date_range("2026-01-01", periods=ROWS, freq="min"),
        }
    )
    outputs = {"frame": frame}
    document = {"success": True, "outputs": outputs, "execution_time": 0.01, "error": None}
    body = benchmark(dumps_response, document, outputs)
    rows = orjson.loads(body)["outputs"]["frame"]
    assert len(rows) == ROWS and rows[1]["id"] == 1 and rows[1]["label"] == "item-1"
    assert rows[1]["at"].startswith("2026-01-01T00:01:00")
