"""Talks to the sidecar's MLflow-compatible ingest endpoint the way MLflow's REST client does.

Usage: metrics_mlflow_rest.py BASE_URL
Prints one JSON line per call: {"call", "status", "body"}. Bodies are encoded with Python's json,
which writes NaN and Infinity bare, as the mlflow client does.
"""
import json
import sys
import time
import urllib.error
import urllib.request

base = sys.argv[1].rstrip("/") + "/api/2.0/mlflow/"


def call(method, path, body=None):
    """Prints the call's status and answer; returns the answer."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            status, text = r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode()
    answer = json.loads(text or "{}")
    print(json.dumps({"call": path, "status": status, "body": answer}), flush=True)
    return answer


# Wait for the endpoint.
for _ in range(200):
    try:
        call("GET", "experiments/get-by-name?experiment_name=anything")
        break
    except (urllib.error.URLError, ConnectionError):
        time.sleep(0.05)

BASE = 1_700_000_000_000
created = call("POST", "runs/create", {"experiment_id": "0", "start_time": BASE})
r = created["run"]["info"]["run_id"]
call("POST", "runs/log-metric", {"run_id": r, "key": "m/single", "value": float("nan"), "timestamp": BASE, "step": 0})
call("POST", "runs/log-batch", {
    "run_id": r,
    "metrics": [{"key": "m/batch", "value": i * 0.5, "timestamp": BASE + i, "step": i} for i in range(990)]
    + [{"key": "m/inf", "value": float("inf"), "timestamp": BASE, "step": 1}],
    "params": [{"key": "lr", "value": "0.01"}],
    "tags": [{"key": "mlflow.runName", "value": "x"}],
})
call("POST", "runs/log-parameter", {"run_id": r, "key": "batch_size", "value": "64"})
call("POST", "runs/set-tag", {"run_id": r, "key": "team", "value": "ml"})
call("POST", "runs/log-batch", {
    "run_id": r,
    "metrics": [{"key": "too/many", "value": 1, "timestamp": BASE + i, "step": i} for i in range(1001)],
})
call("POST", "runs/update", {"run_id": r, "status": "FINISHED"})
