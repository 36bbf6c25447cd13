"""Tracking metrics through `periscope sidecar` into each metastore backend: the embedded SQLite
file, MariaDB with Submarine's tables, and an MLflow tracking server. Run it through
bench/metrics/run, which explains what is measured.

Usage: bench.py PERISCOPE TB_PYTHON MLFLOW DDL WORKDIR
PERISCOPE is the binary; TB_PYTHON a Python with tensorboardX (it writes the event files); MLFLOW
the `mlflow` command (its tracking server); DDL Submarine's tables (tests/harness/submarine-tables.sql).
Set PERISCOPE_BENCH_BACKENDS (e.g. "sqlite,mariadb") to measure only some backends.
"""
import atexit
import datetime
import http.client
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import threading
import time

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from servers import MariaDb, MlflowServer, free_port

periscope, tb_python, mlflow_bin, ddl_file, workdir = sys.argv[1:6]
BATCH = 1000  # MLflow's most metrics in one log_batch
ROUNDS = 3
CLIENT_METRICS = 30_000  # per round and target, through the real mlflow client
RAW_METRICS = 60_000  # per round, backend and connection count, pre-encoded log-batch bodies
RAW_CONNECTIONS = (1, 4)
OUTAGE_ROUNDS = 5  # healthy, down, healthy, down, ...: short rounds, so load drifts hit both
OUTAGE_CALLS = 12  # log_batch calls per healthy or down round
PROBES = 200  # tf.events flushes for the latency measurement
TFE_POINTS = 200_000


class Sidecar:
    """One `periscope sidecar` with its own state folder and experiment, delivering to `backend`."""

    def __init__(self, name, backend, tfevents=None):
        self.dir = os.path.join(workdir, name)
        os.makedirs(self.dir)
        self.state = os.path.join(self.dir, "state")
        self.experiment = f"bench-{name}"
        self.exit_file = os.path.join(self.dir, "exit-code")
        self.port = free_port()
        self.backend = backend
        args = [periscope, "sidecar", "--storage", os.path.join(self.dir, "storage"),
                "--state-dir", self.state, "--experiment-id", self.experiment,
                "--worker", "worker-0", "--listen", "127.0.0.1:0", "--mlflow-listen", f"127.0.0.1:{self.port}",
                "--metastore", backend.metastore(self), "--exit-when-file", self.exit_file,
                "--termination-log", "/dev/null", "--log-level", "warn"]
        if tfevents:
            args += ["--tfevents", tfevents]
        # Only the flags choose the metastore and run: none of the caller's tracking settings.
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("MLFLOW_", "SUBMARINE_", "PERISCOPE_")) and k != "JOB_ID"}
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, env=env,
                                     stderr=open(os.path.join(self.dir, "stderr"), "w"))
        # However the benchmark ends, no sidecar outlives it.
        atexit.register(self.proc.kill)
        deadline = time.time() + 60
        while True:
            try:
                http.client.HTTPConnection("127.0.0.1", self.port, timeout=1).request("GET", "/healthz")
                break
            except OSError:
                if time.time() > deadline or self.proc.poll() is not None:
                    raise SystemExit(f"sidecar {name} did not start: see {self.dir}/stderr")
                time.sleep(0.05)
        self.uri = f"http://127.0.0.1:{self.port}"

    def rows(self, prefix=""):
        return self.backend.count(self, prefix)

    def wait_rows(self, prefix, n, timeout=900):
        """Waits until the backend holds `n` metric rows whose key starts with `prefix`; returns
        when that was seen (polled every 50 ms)."""
        deadline = time.time() + timeout
        while True:
            have = self.rows(prefix)
            if have >= n:
                assert have == n, f"{have} rows for {n} metrics under {prefix!r}: duplicates"
                return time.perf_counter()
            if time.time() > deadline:
                raise SystemExit(f"{self.dir}: only {have} of {n} rows under {prefix!r} after {timeout} s")
            if self.proc.poll() is not None:
                raise SystemExit(f"sidecar {self.dir} exited: see its stderr")
            time.sleep(0.05)

    def stop(self):
        with open(self.exit_file, "w") as f:
            f.write("0\n")
        self.proc.wait(timeout=300)


class Sqlite:
    key, name, poll = "sqlite", "SQLite (embedded)", 0.005

    def __init__(self):
        self.readers = {}
        self.locks = {}

    def metastore(self, sc):
        return "sqlite://" + os.path.join(sc.dir, "metastore.db")

    def _db(self, sc):
        if sc not in self.readers:
            path = os.path.join(sc.dir, "metastore.db")
            self.readers[sc] = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        return self.readers[sc]

    def _query(self, sc, sql, args):
        try:
            return self._db(sc).execute(sql, args).fetchall()
        except sqlite3.OperationalError:
            self.readers.pop(sc, None)  # not created yet, or locked for a moment
            return None

    def count(self, sc, prefix):
        rows = self._query(sc, "SELECT COUNT(*) FROM metric WHERE key LIKE ?", (prefix + "%",))
        return rows[0][0] if rows else 0

    def steps(self, sc, key):
        return [s for (s,) in self._query(sc, "SELECT step FROM metric WHERE key = ?", (key,)) or []]

    def down(self, sc):
        """Unavailable: the benchmark holds SQLite's write lock."""
        lock = sqlite3.connect(os.path.join(sc.dir, "metastore.db"), timeout=30, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        self.locks[sc] = lock

    def up(self, sc):
        lock = self.locks.pop(sc)
        lock.execute("ROLLBACK")
        lock.close()


class Mariadb:
    key, name, poll = "mariadb", "MariaDB (Submarine's tables)", 0.005

    def __init__(self):
        self.db = MariaDb(os.path.join(workdir, "mariadb"), ddl_file)
        self.session = self.db.session()

    def metastore(self, sc):
        return self.db.url()

    def count(self, sc, prefix):
        rows = self.session.rows(f"SELECT COUNT(*) FROM metric WHERE id = '{sc.experiment}' "
                                 f"AND `key` LIKE '{prefix}%'")
        return int(rows[0][0]) if rows else 0

    def steps(self, sc, key):
        rows = self.session.rows(f"SELECT step FROM metric WHERE id = '{sc.experiment}' AND `key` = '{key}'")
        return [int(r[0]) for r in rows or []]

    def down(self, sc):
        """Unavailable: mariadbd killed (SIGKILL)."""
        self.db.stop()

    def up(self, sc):
        self.db.start()


class Mlflow:
    key, name, poll = "mlflow", "MLflow server (SQLite store)", 0.02

    def __init__(self):
        self.server = MlflowServer(os.path.join(workdir, "mlflow"), mlflow_bin)
        self.conn = None

    def metastore(self, sc):
        return "mlflow+" + self.server.uri

    def run_id(self, sc):
        """The sidecar's run, as it remembers it in its state folder (None until it made it)."""
        try:
            with open(os.path.join(sc.state, "mlflow-run.json")) as f:
                return json.load(f)["run_id"]
        except (OSError, ValueError, KeyError):
            return None

    def count(self, sc, prefix):
        run = self.run_id(sc)
        return self.server.count(run, prefix) if run else 0

    def steps(self, sc, key):
        run = self.run_id(sc)
        if not run:
            return []
        try:
            self.conn = self.conn or http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=10)
            return self.server.history_steps(run, key, self.conn)
        except (OSError, http.client.HTTPException):
            self.conn = None
            return []

    def down(self, sc):
        """Unavailable: the tracking server's process group killed (SIGKILL)."""
        self.server.stop()

    def up(self, sc):
        self.server.start()


def batches(prefix, count, key_count=10):
    """`count` batches of distinct metrics (a distinct timestamp each, so no two are one row)."""
    t0 = int(time.time() * 1000) - 10_000_000
    return [[Metric(f"{prefix}/m{i % key_count}", float(i) / 7, t0 + b * BATCH + i, b * BATCH + i)
             for i in range(BATCH)] for b in range(count)]


def timed_calls(client, run_id, work):
    """Logs each batch with one log_batch call; returns each call's seconds."""
    times = []
    for metrics in work:
        start = time.perf_counter()
        client.log_batch(run_id, metrics=metrics)
        times.append(time.perf_counter() - start)
    return times


def raw_bodies(prefix, count):
    return [json.dumps({"run_id": "ignored", "metrics": [
        {"key": m.key, "value": m.value, "timestamp": m.timestamp, "step": m.step} for m in metrics]})
        for metrics in batches(prefix, count)]


def raw_http(port, bodies, connections=1):
    """The endpoint alone: pre-encoded log-batch bodies over `connections` keep-alive connections
    at once (their requests arriving together share one fsync of the queue)."""
    def send(part):
        conn = http.client.HTTPConnection("127.0.0.1", port)
        for body in part:
            conn.request("POST", "/api/2.0/mlflow/runs/log-batch", body, {"Content-Type": "application/json"})
            r = conn.getresponse()
            r.read()
            assert r.status == 200, r.status

    threads = [threading.Thread(target=send, args=(bodies[c::connections],)) for c in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def tb(script, *args):
    return subprocess.run([tb_python, "-c", script, *args], check=True, stdout=subprocess.PIPE, text=True).stdout


WRITE_FILE = """
import sys, time
from tensorboardX import SummaryWriter
w = SummaryWriter(sys.argv[1], max_queue=10000, flush_secs=3600)
# One point per key and millisecond: Submarine's metric table keeps one row per (key, timestamp,
# worker), so points written faster than that would be one row.
t0 = time.time() - 3600
for step in range(int(sys.argv[2]) // 4):
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


def filesystem(path):
    """The type of the filesystem `path` is on (the queue's fsyncs cost nothing on a tmpfs)."""
    best = ("", "?")
    with open("/proc/mounts") as f:
        for line in f:
            _, mount, kind = line.split()[:3]
            if os.path.realpath(path).startswith(mount.rstrip("/") + "/") and len(mount) > len(best[0]):
                best = (mount, kind)
    return best[1]


def median(xs):
    return statistics.median(xs)


def pct(xs, p):
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, int(round(len(s) * p)) - 1))]


def ingest(backends, mlflow):
    """Per round and target: the real mlflow client's log_batch calls (acknowledged rate, then the
    rate until every row is visible in the backend), and raw log-batch bodies (the endpoint's own
    rate, and the backend's delivery rate). The direct target is the same client logging the same
    metrics straight to the MLflow server. Targets take turns in a rotating order."""
    sidecars = {b.key: Sidecar(f"ingest-{b.key}", b) for b in backends}
    direct = None
    if mlflow:
        direct = MlflowClient(tracking_uri=mlflow.server.uri)
        direct_exp = direct.create_experiment("bench-direct")
    targets = [b.key for b in backends] + (["direct"] if mlflow else [])
    acked = {t: [] for t in targets}
    delivered = {t: [] for t in targets}
    raw_acked = {(b.key, c): [] for c in RAW_CONNECTIONS for b in backends}
    raw_delivered = {(b.key, c): [] for c in RAW_CONNECTIONS for b in backends}
    for r in range(ROUNDS):
        work = batches(f"c{r}", CLIENT_METRICS // BATCH)
        bodies = {c: raw_bodies(f"raw{r}x{c}", RAW_METRICS // BATCH) for c in RAW_CONNECTIONS}
        for t in targets[r % len(targets):] + targets[:r % len(targets)]:
            if t == "direct":
                run_id = direct.create_run(direct_exp).info.run_id
                start = time.perf_counter()
                timed_calls(direct, run_id, work)
                # A log_batch call to the server returns once its rows are stored.
                acked[t].append(CLIENT_METRICS / (time.perf_counter() - start))
                delivered[t].append(acked[t][-1])
                assert mlflow.server.count(run_id, f"c{r}/") == CLIENT_METRICS
                continue
            sc = sidecars[t]
            client = MlflowClient(tracking_uri=sc.uri)
            run_id = client.create_run("0").info.run_id
            start = time.perf_counter()
            timed_calls(client, run_id, work)
            acked[t].append(CLIENT_METRICS / (time.perf_counter() - start))
            delivered[t].append(CLIENT_METRICS / (sc.wait_rows(f"c{r}/", CLIENT_METRICS) - start))
            for c in RAW_CONNECTIONS:
                start = time.perf_counter()
                raw_http(sc.port, bodies[c], c)
                raw_acked[t, c].append(RAW_METRICS / (time.perf_counter() - start))
                raw_delivered[t, c].append(RAW_METRICS / (sc.wait_rows(f"raw{r}x{c}/", RAW_METRICS) - start))
    for sc in sidecars.values():
        sc.stop()
    return acked, delivered, raw_acked, raw_delivered


def outage(backend):
    """The training script's log_batch calls to the endpoint while the backend is healthy and while
    it is down, in alternating rounds; after each round everything must arrive, exactly once."""
    sc = Sidecar(f"outage-{backend.key}", backend)
    client = MlflowClient(tracking_uri=sc.uri)
    run_id = client.create_run("0").info.run_id
    client.log_batch(run_id, metrics=batches("warm", 1)[0])
    sc.wait_rows("warm/", BATCH)
    calls = {"healthy": [], "down": []}
    recovery, ratios = [], []
    for r in range(OUTAGE_ROUNDS):
        for state in ("healthy", "down"):
            prefix = f"o{r}{state}"
            work = batches(prefix, OUTAGE_CALLS)
            if state == "down":
                backend.down(sc)
                # Let the sidecar find out (a failed delivery, its retry backoff) before the calls.
                time.sleep(1)
            times = timed_calls(client, run_id, work)
            calls[state].extend(times)
            if state == "down":
                ratios.append(median(times) / median(calls["healthy"][-OUTAGE_CALLS:]))
            if state == "down":
                up = time.perf_counter()
                backend.up(sc)
                recovery.append(sc.wait_rows(prefix + "/", OUTAGE_CALLS * BATCH) - up)
            else:
                sc.wait_rows(prefix + "/", OUTAGE_CALLS * BATCH)
    total = OUTAGE_ROUNDS * 2 * OUTAGE_CALLS * BATCH
    assert sc.rows("o") == total, f"{sc.rows('o')} rows of {total} after the outages"
    sc.stop()
    return calls, recovery, ratios


def latency(backend):
    """From a tf.events flush (tensorboardX, one scalar per flush, every 50 ms) to the row being
    visible in the backend, default sidecar intervals."""
    logdir = os.path.join(workdir, f"latency-tfevents-{backend.key}")
    os.makedirs(logdir)
    sc = Sidecar(f"latency-{backend.key}", backend, tfevents=logdir)
    writer = subprocess.Popen([tb_python, "-c", FLUSH_ONE_BY_ONE, logdir, str(PROBES)],
                              stdout=subprocess.PIPE, text=True)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(writer.stdout))
    reader.start()
    visible = {}
    deadline = time.time() + 180
    while len(visible) < PROBES and time.time() < deadline:
        steps = backend.steps(sc, "latency/probe")
        now = time.time()
        for s in steps:
            visible.setdefault(s, now)
        time.sleep(backend.poll)
    reader.join()
    writer.wait()
    sc.stop()
    flushed = {int(step): float(at) for step, at in (line.split() for line in lines)}
    lat = [visible[s] - flushed[s] for s in flushed if s in visible]
    assert len(lat) == PROBES, f"{len(lat)} of {PROBES} probes became visible in {backend.name}"
    return lat


def tfevents_file(backend, logdir, rounds):
    """A 200,000-scalar event file, present before the sidecar starts, to rows: metrics/s."""
    times = []
    for r in range(rounds):
        start = time.perf_counter()
        sc = Sidecar(f"tfevents-{backend.key}-{r}", backend, tfevents=logdir)
        times.append(sc.wait_rows("", TFE_POINTS) - start)
        sc.stop()
    return TFE_POINTS / median(times)


def main():
    wanted = os.environ.get("PERISCOPE_BENCH_BACKENDS", "sqlite,mariadb,mlflow").split(",")
    began = datetime.datetime.now(datetime.timezone.utc)
    load_before = os.getloadavg()
    backends = [cls() for cls in (Sqlite, Mariadb, Mlflow) if cls.key in wanted]
    mlflow = next((b for b in backends if b.key == "mlflow"), None)
    names = {b.key: b.name for b in backends}
    names["direct"] = "mlflow client straight to the MLflow server"

    acked, delivered, raw_acked, raw_delivered = ingest(backends, mlflow)
    outages = {b.key: outage(b) for b in backends}
    latencies = {b.key: latency(b) for b in backends}
    logdir = os.path.join(workdir, "tfevents-file")
    tb(WRITE_FILE, logdir, str(TFE_POINTS))
    tfe = {b.key: tfevents_file(b, logdir, 1 if b.key == "mlflow" else ROUNDS) for b in backends}
    load_after = os.getloadavg()

    k = lambda v: f"{v / 1000:7.1f} k/s"
    print(f"bench/metrics, {began:%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, load average "
          f"{load_before[0]:.1f} before, {load_after[0]:.1f} after; medians of {ROUNDS} rounds; "
          f"state folders and servers' data on {filesystem(workdir)}")
    print(f"\n1. The real mlflow client, 1 thread, log_batch of {BATCH:,}, {CLIENT_METRICS:,} metrics a round "
          f"(acknowledged: durable in Periscope's queue; delivered: every row visible in the backend)")
    print(f"  {'target':48} {'acknowledged':>13} {'delivered':>13}")
    for t in acked:
        label = names[t] if t == "direct" else f"Periscope endpoint -> {names[t]}"
        print(f"  {label:48} {k(median(acked[t])):>13} {k(median(delivered[t])):>13}")
    print(f"\n2. Raw log-batch bodies of {BATCH:,}, {RAW_METRICS:,} metrics a round")
    for (t, c) in raw_acked:
        label = f"{c} connection{'s' if c > 1 else ''} -> {names[t]}"
        print(f"  {label:48} {k(median(raw_acked[t, c])):>13} {k(median(raw_delivered[t, c])):>13}")
    print(f"\n3. The script's log_batch calls ({BATCH:,} metrics) to the endpoint, metastore healthy vs down "
          f"({OUTAGE_ROUNDS} x {OUTAGE_CALLS} calls each, alternating; all rows arrived exactly once after each outage)")
    print(f"  {'backend (down = )':48} {'healthy p50/p99':>17} {'down p50/p99':>17} {'ratio':>6}"
          f" {'recovery':>9}")
    for t, (calls, recovery, ratios) in outages.items():
        h, d = calls["healthy"], calls["down"]
        how = {"sqlite": "write lock held", "mariadb": "mariadbd killed", "mlflow": "server killed"}[t]
        print(f"  {names[t] + ' (' + how + ')':48} {median(h) * 1000:7.1f}/{pct(h, 0.99) * 1000:5.1f} ms"
              f" {median(d) * 1000:7.1f}/{pct(d, 0.99) * 1000:5.1f} ms {median(ratios):6.2f}"
              f" {median(recovery):7.1f} s")
    print("  (ratio: down/healthy median call time of each round pair, median over the pairs (range "
          + ", ".join(f"{t} {min(r):.2f}-{max(r):.2f}" for t, (_, _, r) in outages.items())
          + "); recovery: from the backend being back to every queued row visible, median)")
    print(f"\n4. tf.events flush to row visible ({PROBES} flushes, 50 ms apart, default sidecar intervals)")
    for t, lat in latencies.items():
        print(f"  {names[t]:48} p50 {median(lat) * 1000:6.0f} ms   p99 {pct(lat, 0.99) * 1000:6.0f} ms"
              f"   (polled every {dict((b.key, b.poll) for b in backends)[t] * 1000:.0f} ms)")
    print(f"\n5. A {TFE_POINTS:,}-scalar event file to rows, incl. sidecar start")
    for t, v in tfe.items():
        print(f"  {names[t]:48} {k(v):>13}" + ("   (1 round)" if t == "mlflow" else ""))
    print("\ngoals: ingest >= 100 k metrics/s; flush-to-visible p99 <= 2000 ms; the script's calls no "
          "slower while the metastore is down (ratio ~1)")


main()
