"""Reads one MLflow run's tags and artifacts with the real client, as a user would.

Usage: mlflow_artifacts.py TRACKING_URI EXPERIMENT_NAME DOWNLOAD_DIR [RUN_NAME]
Prints one JSON object: {"run_id", "artifact_uri", "tags", "params", "metrics", "files": {path:
size}}, where files lists every artifact file of the run (MlflowClient.list_artifacts, folder by
folder). When there are any, the run's whole artifact tree is downloaded into DOWNLOAD_DIR with
mlflow.artifacts.download_artifacts. The experiment must hold exactly one run, or exactly one
named RUN_NAME when that is given.
"""
import json
import sys

import mlflow.artifacts
from mlflow.tracking import MlflowClient
from mlflow_listing import artifact_files

uri, name, dest = sys.argv[1:4]
run_name = sys.argv[4] if len(sys.argv) > 4 else None
client = MlflowClient(tracking_uri=uri)
experiment = client.get_experiment_by_name(name)
if experiment is None:
    sys.exit(f"no experiment {name}")
runs = client.search_runs([experiment.experiment_id])
if run_name is not None:
    runs = [r for r in runs if r.info.run_name == run_name]
if len(runs) != 1:
    sys.exit(f"expected one run in {name} (named {run_name}), found {len(runs)}")
run = runs[0]
run_id = run.info.run_id

files = artifact_files(client, run_id)
if files:
    mlflow.artifacts.download_artifacts(run_id=run_id, dst_path=dest, tracking_uri=uri)
print(json.dumps({
    "run_id": run_id,
    "artifact_uri": run.info.artifact_uri,
    "tags": run.data.tags,
    "params": run.data.params,
    "metrics": run.data.metrics,
    "files": files,
}))
