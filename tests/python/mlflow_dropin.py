"""A training script written for MLflow, run unchanged against Periscope's endpoint (or, to check
the script itself, against a real MLflow tracking server): it logs with the real client's usual
calls and asserts that what it reads back is what it logged.

Usage: mlflow_dropin.py WORKDIR
The tracking URI comes from MLFLOW_TRACKING_URI, as in a script under `periscope run`. Logs one
run (named `trainer`, experiment `dropin`) with params, tags (one deleted), metric histories, a
dataset input, artifacts of every kind (a 3 MiB file, a folder, a dict, a text, a figure, an
image), and a nested child run; then reads them all back through the client (get_run,
get_metric_history, search_runs with the fluent API's defaults and with a filter,
search_experiments, list_artifacts, download_artifacts, load_dict, load_text) and asserts them.
Prints one JSON object: {"experiment_id", "run_id", "child_id", "artifacts": {path: size},
"sha256": {path: hex}} for the caller's own checks (the artifacts in storage).
"""
import hashlib
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import mlflow.artifacts  # noqa: E402
import numpy as np  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from mlflow_listing import artifact_files  # noqa: E402

work = sys.argv[1]
os.makedirs(work, exist_ok=True)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check(cond, what):
    if not cond:
        sys.exit(f"mlflow_dropin: {what}")


# Inputs: a 3 MiB file of random bytes and a small folder tree.
blob = os.path.join(work, "weights.bin")
with open(blob, "wb") as f:
    f.write(np.random.default_rng(7).bytes(3 << 20))
tree = os.path.join(work, "tree")
os.makedirs(os.path.join(tree, "sub"), exist_ok=True)
with open(os.path.join(tree, "a.txt"), "w") as f:
    f.write("alpha\n")
with open(os.path.join(tree, "sub", "b.csv"), "w") as f:
    f.write("x,y\n1,2\n")

experiment = mlflow.set_experiment("dropin")
check(experiment.name == "dropin", f"set_experiment returned {experiment}")
again = mlflow.get_experiment_by_name("dropin")
check(again.experiment_id == experiment.experiment_id, "get_experiment_by_name differs")
check(mlflow.get_experiment_by_name("no-such-experiment") is None, "an unknown name was found")

with mlflow.start_run(run_name="trainer", tags={"team": "ml"}) as run:
    run_id = run.info.run_id
    check(run.info.run_name == "trainer", f"run name {run.info.run_name}")
    check(run.info.experiment_id == experiment.experiment_id, "run in another experiment")
    check(mlflow.active_run().info.run_id == run_id, "active run")
    mlflow.log_param("lr", 0.01)
    mlflow.log_params({"epochs": 3, "optimizer": "adam"})
    mlflow.set_tag("stage", "dev")
    mlflow.set_tags({"owner": "alice", "scratch": "x"})
    mlflow.delete_tag("scratch")
    for step in range(5):
        mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
    mlflow.log_metrics({"acc": 0.9, "f1": 0.75}, step=4)
    dataset = mlflow.data.from_numpy(
        np.arange(10).reshape(5, 2), source="s3://data/train.npy", name="train"
    )
    mlflow.log_input(dataset, context="training")

    mlflow.log_artifact(blob)
    mlflow.log_artifact(blob, artifact_path="checkpoints")
    mlflow.log_artifacts(tree, artifact_path="tree")
    mlflow.log_dict({"layers": [64, 32], "dropout": 0.1}, "config/model.json")
    mlflow.log_text("trained on train.npy\n", "notes/readme.txt")
    fig, ax = plt.subplots()
    ax.plot([1, 0.5, 0.33])
    mlflow.log_figure(fig, "plots/loss.png")
    plt.close(fig)
    mlflow.log_image(np.full((8, 8, 3), 200, dtype=np.uint8), artifact_file="images/grey.png")

    with mlflow.start_run(run_name="fold-1", nested=True) as child:
        child_id = child.info.run_id
        mlflow.log_param("fold", 1)
        mlflow.log_metric("fold_loss", 0.5, step=0)

client = MlflowClient()

# The run as the client reads it back.
got = client.get_run(run_id)
check(got.info.status == "FINISHED", f"status {got.info.status}")
check(got.info.run_name == "trainer", f"run name {got.info.run_name}")
check(got.info.end_time and got.info.end_time >= got.info.start_time, "end time")
params = got.data.params
check(params == {"lr": "0.01", "epochs": "3", "optimizer": "adam"}, f"params {params}")
tags = got.data.tags
for key, value in {"team": "ml", "stage": "dev", "owner": "alice", "mlflow.runName": "trainer"}.items():
    check(tags.get(key) == value, f"tag {key}: {tags}")
check("scratch" not in tags, f"deleted tag still there: {tags}")
check(got.data.metrics == {"loss": 0.2, "acc": 0.9, "f1": 0.75}, f"metrics {got.data.metrics}")
history = client.get_metric_history(run_id, "loss")
points = sorted((m.step, m.value) for m in history)
check(points == [(s, 1.0 / (s + 1)) for s in range(5)], f"history {points}")
inputs = got.inputs.dataset_inputs
check(len(inputs) == 1 and inputs[0].dataset.name == "train", f"inputs {inputs}")
check(inputs[0].tags[0].value == "training", f"input context {inputs[0].tags}")

kid = client.get_run(child_id)
check(kid.data.tags.get("mlflow.parentRunId") == run_id, f"child tags {kid.data.tags}")
check(kid.data.params == {"fold": "1"}, f"child params {kid.data.params}")
check(kid.info.status == "FINISHED", f"child status {kid.info.status}")

# Searches as scripts make them: the fluent API's defaults, and filters.
frame = mlflow.search_runs(experiment_names=["dropin"])
check(sorted(frame["run_id"]) == sorted([run_id, child_id]), f"search_runs {list(frame['run_id'])}")
check(list(frame["run_id"]) == [child_id, run_id], "search_runs orders by start time, newest first")
children = client.search_runs(
    [experiment.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run_id}'"
)
check([r.info.run_id for r in children] == [child_id], f"children {children}")
named = mlflow.search_runs(
    [experiment.experiment_id], filter_string="attributes.run_name = 'trainer'", output_format="list"
)
check([r.info.run_id for r in named] == [run_id], f"by name {named}")
good = client.search_runs([experiment.experiment_id], filter_string="metrics.loss < 0.3 and params.lr = '0.01'")
check([r.info.run_id for r in good] == [run_id], f"by metric and param {good}")
finished = client.search_runs([experiment.experiment_id], filter_string="attributes.status = 'FINISHED'")
check(len(finished) == 2, f"by status {finished}")
names = [e.name for e in mlflow.search_experiments()]
check("dropin" in names, f"search_experiments {names}")
check(
    [e.name for e in mlflow.search_experiments(filter_string="name = 'dropin'")] == ["dropin"],
    "search_experiments by name",
)

# Artifacts: listed, downloaded byte for byte, loaded.
files = artifact_files(client, run_id)
expected = {
    "weights.bin": 3 << 20,
    "checkpoints/weights.bin": 3 << 20,
    "tree/a.txt": 6,
    "tree/sub/b.csv": 8,
    "notes/readme.txt": 21,
}
for path, size in expected.items():
    check(files.get(path) == size, f"artifact {path}: {files}")
for path in ["config/model.json", "plots/loss.png", "images/grey.png"]:
    check(files.get(path, 0) > 0, f"artifact {path}: {files}")
down = mlflow.artifacts.download_artifacts(run_id=run_id, dst_path=os.path.join(work, "down"))
digests = {}
for path in files:
    local = os.path.join(down, *path.split("/"))
    check(os.path.getsize(local) == files[path], f"downloaded size of {path}")
    digests[path] = sha256(local)
check(digests["weights.bin"] == sha256(blob), "weights.bin differs after download")
check(digests["checkpoints/weights.bin"] == sha256(blob), "checkpoints/weights.bin differs")
one = mlflow.artifacts.download_artifacts(
    artifact_uri=f"runs:/{run_id}/tree/sub/b.csv", dst_path=os.path.join(work, "one")
)
with open(one) as f:
    check(f.read() == "x,y\n1,2\n", "a single downloaded file")
check(
    mlflow.artifacts.load_dict(f"runs:/{run_id}/config/model.json") == {"layers": [64, 32], "dropout": 0.1},
    "load_dict",
)
check(mlflow.artifacts.load_text(f"runs:/{run_id}/notes/readme.txt") == "trained on train.npy\n", "load_text")

print(json.dumps({
    "experiment_id": experiment.experiment_id,
    "run_id": run_id,
    "child_id": child_id,
    "artifacts": files,
    "sha256": digests,
}))
