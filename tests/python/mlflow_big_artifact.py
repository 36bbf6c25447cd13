"""Logs one large artifact with the real client, as a script that saves a checkpoint does.

Usage: mlflow_big_artifact.py WORKDIR SIZE_MIB
The tracking URI comes from MLFLOW_TRACKING_URI. Writes WORKDIR/big.bin (SIZE_MIB MiB of
pseudo-random bytes), logs it to a run named `big` of experiment `big` with
`mlflow.log_artifact` (files of 500 MB and more go up as the client's multipart upload), and
prints one JSON object: {"experiment_id", "run_id", "size", "sha256", "seconds"}, seconds being
how long log_artifact took to return.
"""
import hashlib
import json
import os
import sys
import time

import mlflow
import numpy as np

work, mib = sys.argv[1], int(sys.argv[2])
os.makedirs(work, exist_ok=True)
path = os.path.join(work, "big.bin")
digest = hashlib.sha256()
rng = np.random.default_rng(11)
with open(path, "wb") as f:
    for _ in range(mib):
        block = rng.bytes(1 << 20)
        digest.update(block)
        f.write(block)

experiment = mlflow.set_experiment("big")
with mlflow.start_run(run_name="big") as run:
    start = time.monotonic()
    mlflow.log_artifact(path)
    seconds = time.monotonic() - start
print(json.dumps({
    "experiment_id": experiment.experiment_id,
    "run_id": run.info.run_id,
    "size": os.path.getsize(path),
    "sha256": digest.hexdigest(),
    "seconds": seconds,
}))
