"""`mlflow.log_artifact(s)` through Periscope's MLflow-compatible endpoint against straight to an
MLflow tracking server that proxies artifacts (`--serve-artifacts`, its artifact store a local
folder). Run it through bench/mlflow_artifacts/run, which explains what is measured.

Usage: bench.py PERISCOPE MLFLOW WORKDIR
PERISCOPE is the binary, MLFLOW the `mlflow` command. Env: ROUNDS (3), LARGE_MB (1024), FILES
(1000), FILE_KB (16).
"""
import atexit
import contextlib
import http.client
import io
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

from mlflow.tracking import MlflowClient

periscope, mlflow_bin, work = sys.argv[1:4]
ROUNDS = int(os.environ.get("ROUNDS", "3"))
LARGE_MB = int(os.environ.get("LARGE_MB", "1024"))
FILES = int(os.environ.get("FILES", "1000"))
FILE_KB = int(os.environ.get("FILE_KB", "16"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def started(args, log, ready, env=None):
    """Starts `args` as a process group (killed at exit) and waits until `ready()` holds."""
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                            start_new_session=True)

    def kill():
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    atexit.register(kill)
    deadline = time.time() + 180
    while not ready():
        if proc.poll() is not None or time.time() > deadline:
            raise SystemExit(f"{args[0]} did not start: see {log.name}")
        time.sleep(0.1)
    return proc


def answers(port, path):
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        c.request("GET", path)
        return c.getresponse().status == 200
    except OSError:
        return False


clean = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PERISCOPE_"))}

# MLflow's own proxy: artifacts into a local folder, as `mlflow server --serve-artifacts` keeps them.
mlflow_port = free_port()
mlflow_store = os.path.join(work, "mlflow-artifacts")
env = dict(clean, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
started([mlflow_bin, "server", "--backend-store-uri", f"sqlite:///{work}/mlflow.db",
         "--serve-artifacts", "--artifacts-destination", mlflow_store,
         "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1"],
        open(os.path.join(work, "mlflow.log"), "w"), lambda: answers(mlflow_port, "/health"), env)

# Periscope: the sidecar's endpoint, storage a local folder on the same disk.
periscope_port = free_port()
periscope_store = os.path.join(work, "periscope-storage")
started([periscope, "sidecar", "--storage", periscope_store, "--state-dir",
         os.path.join(work, "state"), "--experiment-id", "bench", "--worker", "worker-0",
         "--listen", f"127.0.0.1:{periscope_port}", "--exit-when-file", os.path.join(work, "exit"),
         "--termination-log", "/dev/null", "--log-level", "warn"],
        open(os.path.join(work, "periscope.log"), "w"), lambda: answers(periscope_port, "/"), clean)

# Inputs: one large file, and a folder of small ones.
src = os.path.join(work, "src")
os.makedirs(os.path.join(src, "many"))
large = os.path.join(src, "model.bin")
with open(large, "wb") as f:
    for _ in range(LARGE_MB):
        f.write(os.urandom(1 << 20))
for i in range(FILES):
    d = os.path.join(src, "many", f"d{i % 20}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i}.bin"), "wb") as f:
        f.write(os.urandom(FILE_KB << 10))

TARGETS = {
    "periscope": (f"http://127.0.0.1:{periscope_port}",
                  lambda run: os.path.join(periscope_store, "bench", "worker-0", "mlflow",
                                           run.info.run_id, "artifacts")),
    "mlflow": (f"http://127.0.0.1:{mlflow_port}",
               lambda run: os.path.join(mlflow_store, run.info.experiment_id,
                                        run.info.run_id, "artifacts")),
}


def stored(folder, expect):
    """True once `folder` holds every file of `expect` ({relative path: size}) whole."""
    for rel, size in expect.items():
        try:
            if os.path.getsize(os.path.join(folder, rel)) != size:
                return False
        except OSError:
            return False
    return True


def expected(case):
    if case == "large":
        return {"model.bin": os.path.getsize(large)}
    out = {}
    root = os.path.join(src, "many")
    for d, _, names in os.walk(root):
        for n in names:
            p = os.path.join(d, n)
            out[os.path.join("many", os.path.relpath(p, root))] = os.path.getsize(p)
    return out


def one(target, case, multipart):
    """Logs `case` to a fresh run of `target`; returns (seconds until the call returned, seconds
    until the bytes were in storage)."""
    uri, folder_of = TARGETS[target]
    if multipart is not None:
        os.environ["MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD"] = "true" if multipart else "false"
    else:
        os.environ.pop("MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD", None)
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("bench")
    experiment_id = experiment.experiment_id if experiment else client.create_experiment("bench")
    run = client.create_run(experiment_id)
    folder = folder_of(run)
    expect = expected(case)
    start = time.monotonic()
    if case == "large":
        client.log_artifact(run.info.run_id, large)
    else:
        client.log_artifacts(run.info.run_id, os.path.join(src, "many"), "many")
    returned = time.monotonic() - start
    while not stored(folder, expect):
        time.sleep(0.01)
    in_storage = time.monotonic() - start
    with contextlib.redirect_stdout(io.StringIO()):  # the client's "View run at" line
        client.set_terminated(run.info.run_id)
    shutil.rmtree(folder, ignore_errors=True)
    return returned, in_storage


# Variants: MLflow's proxy cannot take multipart uploads into a local folder (its server-info says
# so), so its client sends one request; Periscope is measured both ways.
VARIANTS = [
    ("large", "periscope", None, "Periscope (client's multipart upload)"),
    ("large", "periscope", False, "Periscope (one request)"),
    ("large", "mlflow", None, "MLflow proxy (one request)"),
    ("many", "periscope", None, "Periscope"),
    ("many", "mlflow", None, "MLflow proxy"),
]
results = {v: [] for v in VARIANTS}
for r in range(ROUNDS):
    order = VARIANTS if r % 2 == 0 else list(reversed(VARIANTS))
    for v in order:
        results[v].append(one(v[1], v[0], v[2]))
        print(f"round {r + 1} {v[3]:40} {v[0]:5}: call {results[v][-1][0]:7.2f} s, "
              f"in storage {results[v][-1][1]:7.2f} s", file=sys.stderr, flush=True)

with open(os.path.join(work, "exit"), "w") as f:
    f.write("0\n")
print(f"load average: {os.getloadavg()}; disk of {work}: "
      f"{subprocess.run(['df', '-T', work], capture_output=True, text=True).stdout.splitlines()[-1].split()[1]}")
for case, title in [("large", f"log_artifact of one {LARGE_MB} MiB file"),
                    ("many", f"log_artifacts of {FILES} files of {FILE_KB} KiB")]:
    print(f"\n{title} (median of {ROUNDS})")
    print(f"  {'':40} {'call returns':>14} {'in storage':>12}")
    for v in VARIANTS:
        if v[0] != case:
            continue
        calls = statistics.median(x[0] for x in results[v])
        stores = statistics.median(x[1] for x in results[v])
        print(f"  {v[3]:40} {calls:12.2f} s {stores:10.2f} s")
print(json.dumps({f"{v[0]}/{v[3]}": results[v] for v in VARIANTS}))
