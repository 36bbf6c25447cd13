"""The real metastore servers bench/metrics delivers to, started the way the test harness starts
them (tests/harness/mariadb.rs, tests/harness/mlflow.rs), all on 127.0.0.1:

* MariaDB (Debian's `mariadbd`) with its own data folder, socket and port, a `submarine` database
  and user, and Submarine's tables from tests/harness/submarine-tables.sql (the file the tests load);
* `mlflow server` with a SQLite backend store and one worker.

Each server leads a process group of its own; `stop()` kills the group at once (as a crash would)
and `start()` starts it again on the same port and data, for the outage measurements.
"""
import atexit
import http.client
import json
import os
import signal
import socket
import sqlite3
import subprocess
import time
import urllib.parse


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


class Group:
    """A process started as the leader of its own group; killed with the group at exit too."""

    def __init__(self, args, log, env=None):
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                                     start_new_session=True)
        atexit.register(self.kill)

    def running(self):
        return self.proc.poll() is None

    def kill(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()


class Server:
    """A server on `self.port` run by `self.server` (a Group, None while stopped)."""

    def stop(self):
        """SIGKILL of the whole group: clients see the connection drop as in a crash (InnoDB
        recovers on the next start); returns once the port is free."""
        self.server.kill()
        self.server = None
        while port_open(self.port):
            time.sleep(0.05)


def mariadb_bin(name):
    # Debian installs the server in /usr/sbin, which a non-root PATH may lack.
    for d in ("/usr/sbin", "/usr/bin"):
        if os.path.exists(os.path.join(d, name)):
            return os.path.join(d, name)
    return name


class MariaDb(Server):
    USER, PASSWORD, DATABASE = "submarine", "bench-pw", "submarine"
    # As tests/harness/mariadb.rs: small InnoDB files, no binary log, no performance schema.
    ARGS = ["--no-defaults", "--user=root", "--bind-address=127.0.0.1", "--skip-log-bin",
            "--innodb-buffer-pool-size=16M", "--innodb-log-file-size=8M", "--performance-schema=OFF"]

    def __init__(self, folder, ddl_file):
        self.dir = folder
        os.makedirs(folder)
        self.data = os.path.join(folder, "data")
        self.socket = os.path.join(folder, "sock")
        out = subprocess.run([mariadb_bin("mariadb-install-db"), *self.ARGS, f"--datadir={self.data}",
                              "--auth-root-authentication-method=normal", "--skip-test-db"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if out.returncode != 0:
            raise SystemExit(f"mariadb-install-db failed:\n{out.stdout}")
        self.port = free_port()
        self.server = None
        self.start()
        self._client(["-uroot", f"--socket={self.socket}"],
                     f"CREATE DATABASE {self.DATABASE}; "
                     f"CREATE USER '{self.USER}'@'%' IDENTIFIED BY '{self.PASSWORD}'; "
                     f"GRANT ALL ON {self.DATABASE}.* TO '{self.USER}'@'%';")
        with open(ddl_file) as f:
            self._client(self._tcp_login() + [self.DATABASE], f.read())

    def _tcp_login(self):
        return ["-h", "127.0.0.1", f"-P{self.port}", f"-u{self.USER}", f"-p{self.PASSWORD}"]

    def _client(self, login, sql, check=True):
        out = subprocess.run([mariadb_bin("mariadb"), "--no-defaults", "--batch", "--skip-column-names",
                              *login, "-e", sql], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if check and out.returncode != 0:
            raise SystemExit(f"{sql[:200]}\nfailed: {out.stderr}")
        return out.returncode == 0

    def start(self):
        assert self.server is None
        log = open(os.path.join(self.dir, "server.log"), "a")
        self.server = Group([mariadb_bin("mariadbd"), *self.ARGS, f"--datadir={self.data}",
                             f"--socket={self.socket}", f"--port={self.port}",
                             f"--pid-file={os.path.join(self.dir, 'pid')}"], log)
        deadline = time.time() + 60
        while not self._client(["-uroot", f"--socket={self.socket}"], "SELECT 1", check=False):
            if not self.server.running() or time.time() > deadline:
                raise SystemExit(f"mariadbd did not start: see {self.dir}/server.log")
            time.sleep(0.1)

    def url(self):
        return f"mysql://{self.USER}:{self.PASSWORD}@127.0.0.1:{self.port}/{self.DATABASE}"

    def session(self):
        return MariaDbSession(self)


class MariaDbSession:
    """One `mariadb` client process kept open over TCP, so that a query costs a round trip and not
    a process start (the latency probe polls every few milliseconds). Started again after a failed
    query (the server was down)."""

    def __init__(self, db):
        self.db = db
        self.proc = None

    def rows(self, sql):
        """The rows of `sql` as lists of strings, or None when the query failed."""
        if self.proc is None or self.proc.poll() is not None:
            self.proc = subprocess.Popen(
                [mariadb_bin("mariadb"), "--no-defaults", "--batch", "--skip-column-names", "--unbuffered",
                 *self.db._tcp_login(), self.db.DATABASE],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)
        try:
            self.proc.stdin.write(sql + ";\nSELECT '--end--';\n")
            self.proc.stdin.flush()
            out = []
            for line in self.proc.stdout:
                line = line.rstrip("\n")
                if line == "--end--":
                    return out
                out.append(line.split("\t"))
        except OSError:
            pass
        # A failed query ends the batch-mode client.
        self.proc.kill()
        self.proc.wait()
        self.proc = None
        return None


class MlflowServer(Server):
    """`mlflow server`, SQLite backend store, one worker (as tests/harness/mlflow.rs runs it)."""

    def __init__(self, folder, mlflow_bin):
        self.dir = folder
        os.makedirs(folder)
        self.db = os.path.join(folder, "mlflow.db")
        self.mlflow = mlflow_bin
        self.server = None
        # Another process may take the free port before the server binds it; then it exits.
        for _ in range(3):
            self.port = free_port()
            if self._try_start():
                return
        raise SystemExit(f"mlflow server did not start: see {self.dir}/server.log")

    def _try_start(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        log = open(os.path.join(self.dir, "server.log"), "a")
        server = Group([self.mlflow, "server", "--backend-store-uri", f"sqlite:///{self.db}",
                        "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"], log, env=env)
        deadline = time.time() + 180
        while time.time() < deadline:
            if not server.running():
                return False
            try:
                if self.request("GET", "/health")[0] == 200:
                    self.server = server
                    return True
            except OSError:
                pass
            time.sleep(0.25)
        raise SystemExit(f"mlflow server did not answer /health in 180 s: see {self.dir}/server.log")

    def start(self):
        assert self.server is None
        deadline = time.time() + 60
        # The killed server's socket may hold the port for a moment.
        while not self._try_start():
            if time.time() > deadline:
                raise SystemExit(f"mlflow server did not start again: see {self.dir}/server.log")
            time.sleep(0.5)

    @property
    def uri(self):
        return f"http://127.0.0.1:{self.port}"

    def request(self, method, path, conn=None):
        c = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        c.request(method, path)
        r = c.getresponse()
        return r.status, r.read()

    def history_steps(self, run_id, key, conn):
        """The steps of `key` in `run_id`, read through the REST API (what an MLflow user sees)."""
        q = urllib.parse.urlencode({"run_id": run_id, "metric_key": key, "max_results": 25000})
        status, body = self.request("GET", f"/api/2.0/mlflow/metrics/get-history?{q}", conn)
        if status != 200:
            return []
        return [m["step"] for m in json.loads(body).get("metrics", [])]

    def count(self, run_id, prefix=""):
        """Metric rows of `run_id` whose key starts with `prefix`, counted in the backend store
        (every point, so a point stored twice would count twice)."""
        try:
            with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5) as db:
                return db.execute("SELECT COUNT(*) FROM metrics WHERE run_uuid = ? AND key LIKE ?",
                                  (run_id, prefix + "%")).fetchone()[0]
        except sqlite3.OperationalError:
            return 0
