"""scikit-learn autologging through the tracking URI in MLFLOW_TRACKING_URI, then the model loaded
back with `mlflow.pyfunc.load_model("runs:/<id>/model")` and with `mlflow.sklearn.log_model`'s
own URI, predicting what the fitted model predicts.

Usage: mlflow_sklearn.py
Fits a small linear regression on synthetic data under `mlflow.sklearn.autolog()` (which logs
params, training metrics and the model), logs the same model again explicitly with
`mlflow.sklearn.log_model(name="explicit")`, loads both back and compares predictions. Prints one
JSON object: {"run_id", "model_uri", "params", "metrics", "predictions"}.
"""
import json
import sys

import mlflow
import mlflow.pyfunc
import mlflow.sklearn
import numpy as np
from sklearn.linear_model import LinearRegression


def check(cond, what):
    if not cond:
        sys.exit(f"mlflow_sklearn: {what}")


rng = np.random.default_rng(3)
X = rng.random((40, 3))
y = X @ np.array([1.5, -2.0, 0.25]) + 0.5

mlflow.set_experiment("sklearn-autolog")
mlflow.sklearn.autolog()
with mlflow.start_run(run_name="fit") as run:
    model = LinearRegression().fit(X, y)
    explicit = mlflow.sklearn.log_model(model, name="explicit")
mlflow.sklearn.autolog(disable=True)
run_id = run.info.run_id

expected = model.predict(X)
loaded = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
got = loaded.predict(X)
check(np.allclose(got, expected), f"runs:/{run_id}/model predicts {got[:3]}, not {expected[:3]}")
again = mlflow.sklearn.load_model(explicit.model_uri)
check(np.allclose(again.predict(X), expected), f"{explicit.model_uri} predicts otherwise")

stored = mlflow.get_run(run_id)
check(stored.data.params.get("fit_intercept") == "True", f"autologged params {stored.data.params}")
check("training_r2_score" in stored.data.metrics, f"autologged metrics {stored.data.metrics}")
print(json.dumps({
    "run_id": run_id,
    "model_uri": explicit.model_uri,
    "params": stored.data.params,
    "metrics": stored.data.metrics,
    "predictions": [float(v) for v in got[:5]],
}))
