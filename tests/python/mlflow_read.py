"""Reads everything an MLflow tracking server holds for one experiment, with the real client.

Usage: mlflow_read.py TRACKING_URI EXPERIMENT_NAME
Prints one JSON object: {"experiment_id", "runs": [{"run_id", "name", "status", "start_time",
"end_time", "tags", "params", "metrics": {key: [[step, timestamp, value], ...]}}]}; NaN is printed
as the string "NaN" and every point of every metric's history is listed (get-history), so
duplicates show.
"""
import json
import math
import sys

from mlflow.tracking import MlflowClient

client = MlflowClient(tracking_uri=sys.argv[1])
experiment = client.get_experiment_by_name(sys.argv[2])
if experiment is None:
    print(json.dumps({"experiment_id": None, "runs": []}))
    sys.exit(0)


def number(v):
    if math.isnan(v):
        return "NaN"
    return v


runs = []
for run in client.search_runs([experiment.experiment_id], max_results=1000):
    metrics = {}
    for key in run.data.metrics:
        history = client.get_metric_history(run.info.run_id, key)
        points = sorted(((m.step, m.timestamp, number(m.value)) for m in history), key=lambda p: p[:2])
        metrics[key] = [list(p) for p in points]
    runs.append({
        "run_id": run.info.run_id,
        "name": run.info.run_name,
        "status": run.info.status,
        "start_time": run.info.start_time,
        "end_time": run.info.end_time,
        "tags": run.data.tags,
        "params": run.data.params,
        "metrics": metrics,
    })
print(json.dumps({"experiment_id": experiment.experiment_id, "runs": runs}))
