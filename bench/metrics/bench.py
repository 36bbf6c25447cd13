"""Tracking metrics through `periscope sidecar` into its embedded SQLite metastore. Run it through
bench/metrics/run, which explains what is measured.

Usage: bench.py PERISCOPE TB_PYTHON WORKDIR
PERISCOPE is the binary; TB_PYTHON a Python with tensorboardX (it writes the event files).
"""
import atexit
import http.client
import json
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import threading
import time

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

periscope, tb_python, workdir = sys.argv[1:4]
BATCH = 1000  # MLflow's most metrics in one log_batch


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sidecar:
    """One `periscope sidecar` with its own state, storage and SQLite metastore."""

    def __init__(self, name, tfevents=None):
        self.dir = os.path.join(workdir, name)
        os.makedirs(self.dir)
        self.db = os.path.join(self.dir, "metastore.db")
        self.exit_file = os.path.join(self.dir, "exit-code")
        self.port = free_port()
        args = [periscope, "sidecar", "--storage", os.path.join(self.dir, "storage"),
                "--state-dir", os.path.join(self.dir, "state"), "--experiment-id", "bench",
                "--worker", "worker-0", "--listen", f"127.0.0.1:{self.port}",
                "--metastore", "sqlite://" + self.db, "--exit-when-file", self.exit_file,
                "--termination-log", "/dev/null", "--log-level", "warn"]
        if tfevents:
            args += ["--tfevents", tfevents]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                     stderr=open(os.path.join(self.dir, "stderr"), "w"))
        # However the benchmark ends, no sidecar outlives it.
        atexit.register(self.proc.kill)
        deadline = time.time() + 30
        while True:
            try:
                http.client.HTTPConnection("127.0.0.1", self.port, timeout=1).request("GET", "/healthz")
                break
            except OSError:
                if time.time() > deadline or self.proc.poll() is not None:
                    raise SystemExit(f"sidecar {name} did not start: see {self.dir}/stderr")
                time.sleep(0.05)
        self.uri = f"http://127.0.0.1:{self.port}"

    def rows(self, where="1=1"):
        try:
            with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5) as db:
                return db.execute(f"SELECT COUNT(*) FROM metric WHERE {where}").fetchone()[0]
        except sqlite3.OperationalError:
            return 0  # not created yet, or locked for a moment

    def wait_rows(self, n, timeout=600):
        deadline = time.time() + timeout
        while self.rows() < n:
            if time.time() > deadline:
                raise SystemExit(f"only {self.rows()} of {n} rows after {timeout} s")
            time.sleep(0.01)

    def stop(self):
        with open(self.exit_file, "w") as f:
            f.write("0\n")
        self.proc.wait(timeout=120)


def batches(prefix, count, key_count=10):
    """`count` batches of distinct metrics (a distinct timestamp each, so no two are one row)."""
    t0 = int(time.time() * 1000) - 10_000_000
    out = []
    for b in range(count):
        out.append([Metric(f"{prefix}/m{i % key_count}", float(i) / 7, t0 + b * BATCH + i, b * BATCH + i)
                    for i in range(BATCH)])
    return out


def mlflow_client_ingest(sc, threads, total):
    client = MlflowClient(tracking_uri=sc.uri)
    run_id = client.create_run("0").info.run_id
    per = total // BATCH // threads
    # Keys distinct per call and thread: equal (key, timestamp) pairs would be one row.
    work = [batches(f"c{threads}.{t}", per) for t in range(threads)]

    def go(t):
        for metrics in work[t]:
            client.log_batch(run_id, metrics=metrics)

    start = time.perf_counter()
    ts = [threading.Thread(target=go, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return per * threads * BATCH / (time.perf_counter() - start)


def raw_http_ingest(sc, total):
    """The endpoint alone: pre-encoded log-batch bodies over one keep-alive connection."""
    conn = http.client.HTTPConnection("127.0.0.1", sc.port)
    bodies = []
    for metrics in batches("raw", total // BATCH):
        bodies.append(json.dumps({"run_id": "ignored", "metrics": [
            {"key": m.key, "value": m.value, "timestamp": m.timestamp, "step": m.step} for m in metrics]}))
    start = time.perf_counter()
    for body in bodies:
        conn.request("POST", "/api/2.0/mlflow/runs/log-batch", body, {"Content-Type": "application/json"})
        r = conn.getresponse()
        r.read()
        assert r.status == 200, r.status
    return len(bodies) * BATCH / (time.perf_counter() - start)


def tb(script, *args):
    return subprocess.run([tb_python, "-c", script, *args], check=True, stdout=subprocess.PIPE, text=True).stdout


WRITE_FILE = """
import sys, time
from tensorboardX import SummaryWriter
w = SummaryWriter(sys.argv[1], max_queue=10000, flush_secs=3600)
# One point per key and millisecond: Submarine's metric table keeps one row per (key, timestamp,
# worker), so points written faster than that would be one row.
t0 = time.time() - 3600
for step in range(50000):
    for tag in ("train/loss", "train/acc", "lr", "grad_norm"):
        w.add_scalar(tag, 1.0 / (step + 1), step, walltime=t0 + step / 1000)
w.close()
"""

FLUSH_ONE_BY_ONE = """
import sys, time
from tensorboardX import SummaryWriter
w = SummaryWriter(sys.argv[1], flush_secs=3600)
for step in range(int(sys.argv[2])):
    w.add_scalar("latency/probe", float(step), step)
    w.flush()
    print(step, time.time(), flush=True)
    time.sleep(0.05)
w.close()
"""


def main():
    results = {}
    # 1. Ingest through the endpoint, three rounds each, alternating.
    rounds = {"mlflow client, 1 thread": [], "mlflow client, 4 threads": [], "raw HTTP log-batch": []}
    for r in range(3):
        sc = Sidecar(f"ingest{r}")
        rounds["mlflow client, 1 thread"].append(mlflow_client_ingest(sc, 1, 30_000))
        rounds["mlflow client, 4 threads"].append(mlflow_client_ingest(sc, 4, 60_000))
        rounds["raw HTTP log-batch"].append(raw_http_ingest(sc, 100_000))
        sc.wait_rows(190_000)
        sc.stop()
    for name, vals in rounds.items():
        results[f"ingest, {name}"] = statistics.median(vals)

    # 2. The same while the metastore is unavailable: the benchmark holds SQLite's write lock.
    sc = Sidecar("locked")
    MlflowClient(tracking_uri=sc.uri).log_batch(MlflowClient(tracking_uri=sc.uri).create_run("0").info.run_id,
                                                metrics=batches("warm", 1)[0])
    sc.wait_rows(BATCH)
    lock = sqlite3.connect(sc.db, timeout=30, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    during = mlflow_client_ingest(sc, 1, 30_000)
    lock.execute("ROLLBACK")
    lock.close()
    sc.wait_rows(BATCH + 30_000)
    sc.stop()
    results["ingest, mlflow client, 1 thread, metastore locked"] = during

    # 3. A 200,000-scalar tf.events file, present before the sidecar starts.
    times = []
    for r in range(3):
        logdir = os.path.join(workdir, f"tfe{r}")
        tb(WRITE_FILE, logdir)
        start = time.perf_counter()
        sc = Sidecar(f"tfevents{r}", tfevents=logdir)
        sc.wait_rows(200_000)
        times.append(time.perf_counter() - start)
        sc.stop()
    results["tf.events file to rows (incl. sidecar start)"] = 200_000 / statistics.median(times)

    # 4. Flush-to-visible latency, one scalar per flush, default intervals.
    logdir = os.path.join(workdir, "latency-tfevents")
    os.makedirs(logdir)
    sc = Sidecar("latency", tfevents=logdir)
    n = 200
    writer = subprocess.Popen([tb_python, "-c", FLUSH_ONE_BY_ONE, logdir, str(n)], stdout=subprocess.PIPE, text=True)
    flushed, visible = {}, {}
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(writer.stdout))
    reader.start()
    db = None
    deadline = time.time() + 120
    while len(visible) < n and time.time() < deadline:
        try:
            db = db or sqlite3.connect(f"file:{sc.db}?mode=ro", uri=True, timeout=5)
            steps = [s for (s,) in db.execute("SELECT step FROM metric WHERE key = 'latency/probe'")]
        except sqlite3.OperationalError:
            db, steps = None, []
        now = time.time()
        for s in steps:
            visible.setdefault(s, now)
        time.sleep(0.005)
    reader.join()
    writer.wait()
    sc.stop()
    for line in lines:
        step, at = line.split()
        flushed[int(step)] = float(at)
    lat = sorted(visible[s] - flushed[s] for s in flushed if s in visible)
    assert len(lat) == n, f"{len(lat)} of {n} probes became visible"

    print("metric ingest into the embedded SQLite metastore (acknowledged = durable in the queue)")
    for name, v in results.items():
        print(f"  {name:58} {v / 1000:8.1f} k metrics/s")
    print(f"  {'flush-to-visible latency (tf.events -> SQLite row)':58} p50 {statistics.median(lat) * 1000:6.0f} ms"
          f"   p99 {lat[int(len(lat) * 0.99) - 1] * 1000:6.0f} ms   (n={n})")
    print("goals: ingest >= 100 k metrics/s; p99 <= 2000 ms; no slowdown while the metastore is down")


main()
