"""A fleet of sidecars on one machine, each its own worker of one experiment, against one MariaDB,
one MLflow server and one S3 server (moto). See bench/fleet/README.md for what it measures.

Usage (from bench/fleet/run): bench.py PERISCOPE MOTO_SERVER MLFLOW DDL WORK
Environment: FLEET_SIZES (default "10 50 100 200"), FLEET_SECONDS (load per size, default 30),
FLEET_BACKENDS (default "mariadb mlflow"), FLEET_MLFLOW_SIZES (default "10 20"), FLEET_OUTAGE_N
(sidecars in the outage run, default 200; 0 skips it), FLEET_OUTAGE_SECONDS (default 60),
FLEET_CATCHUP_SECONDS (how long the metastore may take to show every metric after the load, and
the sidecars' drain timeout; default 120).
"""
import http.client
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "metrics"))
import servers  # noqa: E402

PERISCOPE, MOTO, MLFLOW, DDL, WORK = sys.argv[1:6]
SIZES = [int(n) for n in os.environ.get("FLEET_SIZES", "10 50 100 200").split()]
SECONDS = float(os.environ.get("FLEET_SECONDS", "30"))
BACKENDS = os.environ.get("FLEET_BACKENDS", "mariadb mlflow").split()
MLFLOW_SIZES = [int(n) for n in os.environ.get("FLEET_MLFLOW_SIZES", "10 20").split()]
OUTAGE_N = int(os.environ.get("FLEET_OUTAGE_N", "200"))
OUTAGE_SECONDS = float(os.environ.get("FLEET_OUTAGE_SECONDS", "60"))
CATCHUP_SECONDS = float(os.environ.get("FLEET_CATCHUP_SECONDS", "120"))
PER_BATCH = 100          # metrics per log-batch: one batch per sidecar per second = 100 metrics/s
LOG_BYTES = 10 * 1024    # log bytes per sidecar per second
LOAD_THREADS = 16
TICK = os.sysconf("SC_CLK_TCK")


def pct(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


class MetastoreMariaDb(servers.MariaDb):
    """MariaDB with its own InnoDB sizes (a 128 MiB buffer pool), as a metastore server runs, not
    the tests' small ones: a fleet writes a million rows in minutes."""
    ARGS = [a for a in servers.MariaDb.ARGS
            if not a.startswith(("--innodb-buffer-pool-size", "--innodb-log-file-size"))]


class S3:
    def __init__(self):
        self.port = servers.free_port()
        log = open(os.path.join(WORK, "moto.log"), "a")
        self.group = servers.Group([MOTO, "-H", "127.0.0.1", "-p", str(self.port)], log)
        while not servers.port_open(self.port):
            time.sleep(0.2)
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        c.request("PUT", "/fleet")
        c.getresponse().read()

    def env(self):
        return {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{self.port}", "AWS_ACCESS_KEY_ID": "bench",
                "AWS_SECRET_ACCESS_KEY": "benchbench", "AWS_REGION": "us-east-1"}


class Sidecar:
    def __init__(self, run, i, metastore, env):
        self.worker = f"w{i:03d}"
        self.run, self.metastore, self.env = run, metastore, env
        self.dir = os.path.join(WORK, run, self.worker)
        os.makedirs(os.path.join(self.dir, "logs"))
        self.log = open(os.path.join(self.dir, "logs", "train.log"), "ab")
        self.starts = 0
        self.start()
        self.conn = None
        self.run_id = None     # the endpoint's run, started as mlflow.start_run does
        self.sent = 0          # batches acknowledged
        self.sent_at = {}      # batch -> monotonic send time
        self.visible_at = {}   # batch -> monotonic time its last point was seen

    def start(self):
        """Starts the sidecar on a port that was free a moment ago."""
        self.starts += 1
        self.port = servers.free_port()
        err = open(os.path.join(self.dir, "sidecar.err"), "ab")
        self.proc = subprocess.Popen(
            [PERISCOPE, "sidecar", "--storage", "s3://fleet/runs", "--experiment-id", self.run,
             "--worker", self.worker, "--metastore", self.metastore,
             "--logs", os.path.join(self.dir, "logs", "*.log"),
             "--state-dir", os.path.join(self.dir, "state"), "--code-dir", os.path.join(self.dir, "code"),
             "--exit-when-file", os.path.join(self.dir, "exit-code"),
             "--listen", "127.0.0.1:0", "--mlflow-listen", f"127.0.0.1:{self.port}",
             "--drain-timeout", str(CATCHUP_SECONDS), "--log-level", "warn"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=self.env)

    def ready(self):
        if self.run_id is None and servers.port_open(self.port):
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                c.request("POST", "/api/2.0/mlflow/runs/create", json.dumps({"experiment_id": "0"}),
                          {"Content-Type": "application/json"})
                r = c.getresponse()
                if r.status == 200:
                    self.run_id = json.loads(r.read())["run"]["info"]["run_id"]
                c.close()
            except OSError:
                pass
        return self.run_id is not None

    def send(self, batch, ts_base):
        metrics = [{"key": "m", "value": float(j), "timestamp": ts_base + batch * PER_BATCH + j,
                    "step": batch * PER_BATCH + j} for j in range(PER_BATCH)]
        body = json.dumps({"run_id": self.run_id, "metrics": metrics})
        for _ in range(3):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                self.sent_at[batch] = time.monotonic()
                self.conn.request("POST", "/api/2.0/mlflow/runs/log-batch", body,
                                  {"Content-Type": "application/json"})
                r = self.conn.getresponse()
                r.read()
                if r.status == 200:
                    self.sent += 1
                    return True
                time.sleep(0.5)
            except OSError:
                self.conn = None
        return False

    def cpu_ticks(self):
        try:
            fields = open(f"/proc/{self.proc.pid}/stat").read().rsplit(")", 1)[1].split()
            return int(fields[11]) + int(fields[12])
        except OSError:
            return 0

    def rss_kib(self):
        try:
            for line in open(f"/proc/{self.proc.pid}/status"):
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except OSError:
            pass
        return 0


class Load:
    """Every second: one batch of 100 metrics to each sidecar's endpoint and 10 KiB to its log,
    spread over 16 threads (with fewer, 200 sidecars' answers take longer than a second)."""

    def __init__(self, fleet):
        self.fleet, self.stop, self.threads, self.batch = fleet, threading.Event(), [], 0
        self.ts_base = int(time.time() * 1000)  # ms; batch * 100 + j stays within DATETIME(3)

    def start(self):
        line = (b"x" * 99 + b"\n") * (LOG_BYTES // 100)
        for k in range(LOAD_THREADS):
            part = self.fleet[k::LOAD_THREADS]
            t = threading.Thread(target=self._run, args=(part, line), daemon=True)
            t.start()
            self.threads.append(t)

    def _run(self, part, line):
        batch, next_at = 0, time.monotonic()
        while not self.stop.is_set():
            for s in part:
                s.send(batch, self.ts_base)
                s.log.write(line)
                s.log.flush()
            batch += 1
            next_at += 1.0
            time.sleep(max(0.0, next_at - time.monotonic()))

    def end(self):
        self.stop.set()
        for t in self.threads:
            t.join()


class Visible:
    """Polls the backend: per worker the highest step and row count; marks batches visible."""

    def __init__(self, fleet, query, conns=None):
        self.fleet = {s.worker: s for s in fleet}
        self.query, self.conns = query, conns
        self.rows, self.peak_conns, self.stop = 0, 0, threading.Event()
        self.samples = []   # (monotonic, rows)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.is_set():
            got = self.query()
            now = time.monotonic()
            if got is not None:
                total = 0
                for worker, max_step, count in got:
                    total += count
                    s = self.fleet.get(worker)
                    if s is None:
                        continue
                    last = (max_step + 1) // PER_BATCH - 1
                    for b in list(s.sent_at):
                        if b <= last and b not in s.visible_at:
                            s.visible_at[b] = now
                self.rows = total
                self.samples.append((now, total))
            if self.conns:
                c = self.conns()
                if c is not None:
                    self.peak_conns = max(self.peak_conns, c)
            time.sleep(0.25)

    def end(self):
        self.stop.set()
        self.thread.join()


def mariadb_probe(db, run, ts_base, workers):
    """Each worker's last step stored, read from the rows past the slowest worker's (an index
    range: the primary key is (id, key, timestamp, worker), and a point's timestamp is ts_base +
    its step), so a look costs the new rows, not the million already there. A worker's batches
    commit whole and in order, so its last step + 1 is its row count."""
    session = db.session()  # the probe thread's own: a session answers one thread at a time
    last = {}

    def query():
        frontier = ts_base + (min(last.values()) if len(last) == len(workers) else 0)
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(frontier // 1000)) + f".{frontier % 1000:03d}"
        rows = session.rows(f"SELECT worker_index, MAX(step) FROM metric WHERE id = '{run}' AND `key` = 'm' "
                            f"AND `timestamp` >= '{when}' GROUP BY worker_index")
        if rows is None:
            return None
        for w, m in rows:
            last[w] = max(last.get(w, -1), int(m))
        return [(w, m, m + 1) for w, m in last.items()]

    def conns():
        rows = session.rows("SHOW GLOBAL STATUS LIKE 'Threads_connected'")
        return None if not rows else int(rows[0][1])
    return query, conns


def status(session, name):
    rows = session.rows(f"SHOW GLOBAL STATUS LIKE '{name}'")
    return int(rows[0][1]) if rows else 0


def mlflow_probe(server, run):
    def query():
        try:
            with sqlite3.connect(f"file:{server.db}?mode=ro", uri=True, timeout=5) as db:
                return [(w, int(m), int(c)) for w, m, c in db.execute(
                    "SELECT r.name, MAX(m.step), COUNT(*) FROM metrics m JOIN runs r ON m.run_uuid = r.run_uuid "
                    "JOIN experiments e ON r.experiment_id = e.experiment_id WHERE e.name = ? GROUP BY r.name",
                    (run,))]
        except sqlite3.Error:
            return None
    return query, None


def fleet_run(backend, n, metastore, env, db=None, mlflow=None, outage=0.0):
    run = f"fleet-{backend}-{n}" + ("-outage" if outage else "")
    fleet = [Sidecar(run, i, metastore, env) for i in range(n)]
    try:
        return measure(run, n, fleet, backend, db, mlflow, outage)
    finally:
        # A failed run leaves no sidecar behind to load the next one.
        for s in fleet:
            if s.proc.poll() is None:
                s.proc.kill()
                s.proc.wait()


def measure(run, n, fleet, backend, db, mlflow, outage):
    deadline = time.time() + 120
    while not all(s.ready() for s in fleet):
        gone = next((s for s in fleet if s.proc.poll() is not None), None)
        if gone:
            err = open(os.path.join(gone.dir, "sidecar.err")).read()[-2000:]
            # Another process took the free port before the sidecar bound it: another port.
            if "Address in use" in err and gone.starts < 3:
                gone.start()
                continue
            raise SystemExit(f"{run}: sidecar {gone.worker} exited with {gone.proc.returncode}:\n{err}")
        if time.time() > deadline:
            raise SystemExit(f"{run}: sidecars did not start (see {WORK}/{run}/*/sidecar.err)")
        time.sleep(0.2)
    load = Load(fleet)
    if backend == "mariadb":
        query, conns = mariadb_probe(db, run, load.ts_base, [s.worker for s in fleet])
        session = db.session()  # this thread's
        session.rows("FLUSH STATUS")
        refused0 = status(session, "Connection_errors_max_connections")
    else:
        query, conns = mlflow_probe(mlflow, run)
    visible = Visible(fleet, query, conns)
    cpu0, t0 = sum(s.cpu_ticks() for s in fleet), time.monotonic()
    load.start()
    outage_report = None
    if outage:
        time.sleep(SECONDS / 2)
        db.stop()
        down_at = time.monotonic()
        time.sleep(outage)
        db.start()
        up_at = time.monotonic()
        before = session.rows("SHOW GLOBAL STATUS WHERE Variable_name IN ('Connections', 'Aborted_connects')")
        time.sleep(SECONDS / 2)
        outage_report = {"down": up_at - down_at, "up_at": up_at, "status0": before}
    else:
        time.sleep(SECONDS)
    rss = [s.rss_kib() for s in fleet]
    cpu1, t1 = sum(s.cpu_ticks() for s in fleet), time.monotonic()
    load.end()
    sent = sum(s.sent for s in fleet) * PER_BATCH
    # Wait for every acknowledged metric to be visible (the queues drain), at most 10 minutes.
    stop_at = time.monotonic()
    while visible.rows < sent and time.monotonic() - stop_at < CATCHUP_SECONDS:
        time.sleep(0.25)
    caught_up = time.monotonic()
    for s in fleet:
        open(os.path.join(s.dir, "exit-code"), "w").write("0\n")
    codes = [s.proc.wait(timeout=900) for s in fleet]
    visible.end()
    # Every row, doubled ones included (the MariaDB probe counts each worker's steps).
    total = visible.rows
    if backend == "mariadb":
        total = int(session.rows(f"SELECT COUNT(*) FROM metric WHERE id = '{run}'")[0][0])
    lat = [s.visible_at[b] - s.sent_at[b] for s in fleet for b in s.visible_at]
    steady = [(t, r) for t, r in visible.samples if t0 + 5 <= t <= t1]
    rate = (steady[-1][1] - steady[0][1]) / (steady[-1][0] - steady[0][0]) if len(steady) > 1 else 0
    out = {"run": run, "n": n, "offered": n * PER_BATCH, "delivered_per_s": rate, "sent": sent,
           "stored": total, "p50": pct(lat, 50), "p99": pct(lat, 99),
           "peak_conns": visible.peak_conns, "rss_med_mib": statistics.median(rss) / 1024,
           "rss_max_mib": max(rss) / 1024, "cpu_cores": (cpu1 - cpu0) / TICK / (t1 - t0),
           "catch_up_s": caught_up - stop_at, "exit_codes": sorted(set(codes))}
    if outage_report:
        # When every backlog had drained after MariaDB came back.
        done = next((t for t, r in visible.samples if r >= sent), None)
        out["drained_after_up_s"] = (done - outage_report["up_at"]) if done else float("nan")
        after = session.rows("SHOW GLOBAL STATUS WHERE Variable_name IN ('Connections', 'Aborted_connects', "
                             "'Max_used_connections')")
        out["status_after_up"] = after
    if backend == "mariadb":
        out["max_used_connections"] = session.rows("SHOW GLOBAL STATUS LIKE 'Max_used_connections'")
        # Connection attempts the server refused as full (its counters start again at a restart).
        out["refused_connects"] = status(session, "Connection_errors_max_connections") - (
            0 if outage else refused0)
    print(json.dumps(out), flush=True)
    return out


def main():
    env = dict(os.environ)
    s3 = S3()
    env.update(s3.env())
    results = []
    db = mlflow = None
    if "mariadb" in BACKENDS:
        db = MetastoreMariaDb(os.path.join(WORK, "mariadb"), DDL)
        print(f"mariadb on {db.port}, max_connections 151", flush=True)
        for n in SIZES:
            results.append(fleet_run("mariadb", n, db.url(), env, db=db))
        if OUTAGE_N:
            results.append(fleet_run("mariadb", OUTAGE_N, db.url(), env, db=db, outage=OUTAGE_SECONDS))
    if "mlflow" in BACKENDS:
        mlflow = servers.MlflowServer(os.path.join(WORK, "mlflow"), MLFLOW)
        for n in MLFLOW_SIZES:
            results.append(fleet_run("mlflow", n, f"mlflow+http://127.0.0.1:{mlflow.port}", env, mlflow=mlflow))
    print("\n| run | sidecars | offered metrics/s | delivered rows/s | p50 / p99 flush-to-visible | "
          "peak connections | refused connects | RSS median / max | sidecars' CPU | caught up after load | lost | doubled |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['run']} | {r['n']} | {r['offered']} | {r['delivered_per_s']:.0f} | "
              f"{r['p50']:.2f} / {r['p99']:.2f} s | {r['peak_conns'] or '-'} | {r.get('refused_connects', '-')} | "
              f"{r['rss_med_mib']:.1f} / {r['rss_max_mib']:.1f} MiB | {r['cpu_cores']:.2f} cores | "
              f"{r['catch_up_s']:.1f} s | {r['sent'] - min(r['sent'], r['stored'])} | "
              f"{max(0, r['stored'] - r['sent'])} |")
    print(f"load average: {os.getloadavg()}")


main()
