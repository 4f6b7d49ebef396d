"""Real-time inference: `on_init` trains a small model once; `/invoke` scores rows.

    pipeserve serve pipelines.inference:inference_pipeline
    curl -X POST localhost:8000/invoke -H 'Content-Type: application/json' \
      -d '{"parameters": {"rows": [[0.5, -1.2, 0.3, 1.1]]}}'
"""

from dataclasses import dataclass
from typing import Annotated

import numpy as np
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from service import StepContext, pipeline, step


@dataclass(frozen=True)
class Model:
    classifier: LogisticRegression
    class_names: tuple[str, ...]
    n_features: int


def load_model() -> Model:
    """Runs once per server process, before it is ready; the model is then shared."""
    iris = load_iris()
    classifier = LogisticRegression(max_iter=1000).fit(iris.data, iris.target)
    return Model(classifier, tuple(str(n) for n in iris.target_names), iris.data.shape[1])


@step
def validate(rows: list[list[float]], context: StepContext) -> np.ndarray:
    """Check the batch against the model's feature count."""
    model: Model = context.state
    batch = np.asarray(rows, dtype=float)
    if batch.ndim != 2 or batch.shape[1] != model.n_features:
        raise ValueError(
            f"each row needs {model.n_features} features; got an array of shape {batch.shape}"
        )
    return batch


@step
def predict(
    batch: np.ndarray, context: StepContext
) -> tuple[Annotated[list[str], "labels"], Annotated[np.ndarray, "probabilities"]]:
    """Score the batch: a label and class probabilities per row."""
    model: Model = context.state
    probabilities = model.classifier.predict_proba(batch)
    labels = [model.class_names[i] for i in probabilities.argmax(axis=1)]
    return labels, probabilities.round(4)


@pipeline(on_init=load_model)
def inference_pipeline(
    rows: list[list[float]] = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]],  # noqa: B006
) -> tuple[list[str], np.ndarray]:
    """Score a batch of iris measurements with a model loaded once per process."""
    batch = validate(rows)
    return predict(batch)
