"""The training pipeline of the ZenML deployment tutorial, served by pipeserve.

pipeserve serve pipelines.training:training_pipeline
"""

from typing import Annotated, Any

import numpy as np
import pandas as pd
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.metrics import accuracy_score
from sklearn.model_selection import train_test_split

from service import pipeline, step


@step
def load_data(data_url: str) -> pd.DataFrame:
    """Load the data set (synthetic here: no network is needed to try it)."""
    rng = np.random.default_rng(42)
    n_samples = 1000
    features = rng.normal(0, 1, (n_samples, 3))
    # A target that depends on the features, so that the models have something to learn.
    target = features[:, 0] + 0.5 * features[:, 1] + rng.normal(0, 0.5, n_samples) > 0
    return pd.DataFrame(
        {
            "feature_1": features[:, 0],
            "feature_2": features[:, 1],
            "feature_3": features[:, 2],
            "target": target.astype(int),
        }
    )


@step
def preprocess(data: pd.DataFrame) -> dict[str, Any]:
    """Split into train and test sets."""
    x = data.drop("target", axis=1)
    y = data["target"]
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=42)
    return {"X_train": x_train, "X_test": x_test, "y_train": y_train, "y_test": y_test}


@step
def train_and_evaluate(
    datasets: dict[str, Any], model_type: str = "random_forest"
) -> Annotated[dict[str, Any], "metrics"]:
    """Train a model of the given type and measure its accuracy on the test set."""
    if model_type == "random_forest":
        model: Any = RandomForestClassifier(n_estimators=100, random_state=42)
    elif model_type == "gradient_boosting":
        model = GradientBoostingClassifier(random_state=42)
    else:
        raise ValueError(f"Unknown model type: {model_type}")
    model.fit(datasets["X_train"], datasets["y_train"])
    accuracy = accuracy_score(datasets["y_test"], model.predict(datasets["X_test"]))
    return {"accuracy": float(accuracy), "model_type": model_type}


@pipeline
def training_pipeline(
    data_url: str = "s3://example-bucket/data.csv",
    model_type: str = "random_forest",
) -> dict[str, Any]:
    """A configurable training pipeline that can be triggered externally."""
    data = load_data(data_url)
    datasets = preprocess(data)
    return train_and_evaluate(datasets, model_type)
