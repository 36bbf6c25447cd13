"""Logs with the real mlflow client (mlflow-skinny) to the sidecar's ingest endpoint.

Usage: metrics_mlflow_client.py TRACKING_URI [END_STATUS]
Logs params, a tag, single metrics (NaN, Infinity) and batches with explicit timestamps, as a
training script would, then ends the run (with `end_run(status=END_STATUS)` when given, as a
script that marks its own run FAILED does). Prints the run id.
"""
import sys

import mlflow
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

BASE = 1_700_000_000_000
mlflow.set_tracking_uri(sys.argv[1])
mlflow.set_experiment("whatever-the-script-calls-it")
with mlflow.start_run() as run:
    mlflow.log_param("lr", "0.01")
    mlflow.set_tag("team", "ml")
    mlflow.log_metric("client/nan", float("nan"), step=0, timestamp=BASE)
    mlflow.log_metric("client/inf", float("inf"), step=1, timestamp=BASE)
    client = MlflowClient()
    for start in range(0, 2500, 1000):
        client.log_batch(run.info.run_id, metrics=[
            Metric("client/loss", i * 0.25, BASE + i, i) for i in range(start, min(start + 1000, 2500))
        ])
    if len(sys.argv) > 2:
        mlflow.end_run(status=sys.argv[2])
print(run.info.run_id)
