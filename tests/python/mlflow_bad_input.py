"""Artifacts larger than the free disk, sent with the real client as a script would.

Usage: mlflow_bad_input.py WORKDIR SIZE_MIB
The tracking URI comes from MLFLOW_TRACKING_URI. In a run named `victim` of experiment
`bad-input`, logs WORKDIR/big.bin (SIZE_MIB MiB) once in one request and once as the client's
multipart upload (its threshold lowered to 5 MiB), catching what each raises, then logs a small
file, which must work. Prints one JSON object: {"experiment_id", "run_id", "single", "multipart"}
with the two errors' texts (null when no error was raised).
"""
import json
import os
import sys

import mlflow

work, mib = sys.argv[1], int(sys.argv[2])
os.makedirs(work, exist_ok=True)
big = os.path.join(work, "big.bin")
with open(big, "wb") as f:
    for _ in range(mib):
        f.write(os.urandom(1 << 20))
small = os.path.join(work, "small.txt")
with open(small, "w") as f:
    f.write("still works\n")


def attempt():
    try:
        mlflow.log_artifact(big)
    except Exception as e:  # noqa: BLE001 - the test reads whatever the client raised
        return str(e)
    return None


experiment = mlflow.set_experiment("bad-input")
with mlflow.start_run(run_name="victim") as run:
    single = attempt()
    os.environ["MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE"] = str(5 << 20)
    os.environ["MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE"] = str(5 << 20)
    multipart = attempt()
    mlflow.log_artifact(small)
print(json.dumps({
    "experiment_id": experiment.experiment_id,
    "run_id": run.info.run_id,
    "single": single,
    "multipart": multipart,
}))
