"""Reads one MLflow run's tags and artifacts with the real client, as a user would.

Usage: mlflow_artifacts.py TRACKING_URI EXPERIMENT_NAME DOWNLOAD_DIR
Prints one JSON object: {"run_id", "artifact_uri", "tags", "files": {path: size}}, where files
lists every artifact file of the run (MlflowClient.list_artifacts, folder by folder). When there
are any, the run's whole artifact tree is downloaded into DOWNLOAD_DIR with
mlflow.artifacts.download_artifacts. The experiment must hold exactly one run.
"""
import json
import sys

import mlflow.artifacts
from mlflow.tracking import MlflowClient

uri, name, dest = sys.argv[1:4]
client = MlflowClient(tracking_uri=uri)
experiment = client.get_experiment_by_name(name)
if experiment is None:
    sys.exit(f"no experiment {name}")
runs = client.search_runs([experiment.experiment_id])
if len(runs) != 1:
    sys.exit(f"expected one run in {name}, found {len(runs)}")
run = runs[0]
run_id = run.info.run_id

files = {}


def walk(path):
    for info in client.list_artifacts(run_id, path):
        if info.is_dir:
            walk(info.path)
        else:
            files[info.path] = info.file_size


walk(None)
if files:
    mlflow.artifacts.download_artifacts(run_id=run_id, dst_path=dest, tracking_uri=uri)
print(json.dumps({
    "run_id": run_id,
    "artifact_uri": run.info.artifact_uri,
    "tags": run.data.tags,
    "files": files,
}))
