"""A training pipeline for the durable-run tests: a pandas DataFrame and a fitted
scikit-learn model cross a checkpoint, and the resumed run predicts with them."""

from __future__ import annotations

from typing import Annotated, Any

import pandas as pd
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from service import pipeline, step
from tests.durable_pipelines import note, wait_for


@step
def load(log: str) -> Annotated[pd.DataFrame, "frame"]:
    note(log, "load")
    iris = load_iris(as_frame=True)
    frame: pd.DataFrame = iris.frame
    frame["species"] = pd.Categorical([str(iris.target_names[t]) for t in iris.target])
    frame["measured_at"] = pd.date_range("2026-01-01", periods=len(frame), freq="h")
    return frame


@step
def train(frame: pd.DataFrame, log: str) -> Annotated[Any, "model"]:
    note(log, "train")
    model = LogisticRegression(max_iter=500)
    model.fit(frame.iloc[:, :4], frame["target"])
    return model


@step
def wait(model: Any, log: str, gate: str) -> Annotated[Any, "held_model"]:
    note(log, "wait")
    wait_for(gate)
    return model


@step
def predict(model: Any, frame: pd.DataFrame, log: str) -> Annotated[dict[str, Any], "scored"]:
    note(log, "predict")
    return {
        "predictions": [int(p) for p in model.predict(frame.iloc[:, :4])],
        "probabilities": [
            round(float(p), 12) for p in model.predict_proba(frame.iloc[:5, :4])[:, 0]
        ],
        "species": frame["species"].astype(str).tolist()[:3],
        "last_measured": frame["measured_at"].iloc[-1].isoformat(),
        "rows": len(frame),
    }


@pipeline
def training(log: str, gate: str) -> Any:
    frame = load(log)
    return predict(wait(train(frame, log), log, gate), frame, log)
