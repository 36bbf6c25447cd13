//! A real MLflow tracking server (the `mlflow` package in `venv-mlflow`) on 127.0.0.1 with a
//! SQLite backend store in a temp folder, and a reader that fetches what it holds through the
//! real mlflow client (`tests/python/mlflow_read.py`).
//!
//! The server runs in its own process group (uvicorn starts workers) and the whole group is
//! killed on [`MlflowServer::stop`] and on drop. [`MlflowServer::start_again`] starts it on the
//! same port and database, for outage tests.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::process::ServerProcess;
use super::rawhttp::request;
use super::{free_port, tool};

/// A tracking server. Invariant: while `process` is `Some`, it serves `port` from `db`, over
/// HTTPS with `tls`'s leaf certificate when that is set, with runs' artifacts under
/// `artifacts`'s root when that is set, else proxying them into `<dir>/artifacts` (MLflow 3's
/// default, `mlflow-artifacts:` URIs).
pub struct MlflowServer {
    process: Option<ServerProcess>,
    pub port: u16,
    dir: tempfile::TempDir,
    db: PathBuf,
    tls: Option<TlsFiles>,
    artifacts: Option<ArtifactStore>,
}

/// An artifact store the clients write to directly (no proxying by the server): the root every
/// run's `artifact_uri` is under, and the environment that reaches it (for the server, which
/// lists artifacts for the UI, and for the mlflow client).
pub struct ArtifactStore {
    pub root: String,
    pub env: Vec<(&'static str, String)>,
}

/// The certificate files of an HTTPS server.
struct TlsFiles {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

/// How long a server may take to answer `/health` (≈ 5–20 s on a loaded 2-core machine).
const START_LIMIT: Duration = Duration::from_secs(180);

impl MlflowServer {
    /// Starts a server on a free port with an empty database and waits until it is healthy.
    pub fn start() -> MlflowServer {
        Self::start_with(None)
    }

    /// Starts a server that speaks HTTPS with `ca`'s leaf certificate (uvicorn's TLS options).
    /// It counts as started once it accepts connections: callers retry their first call.
    pub fn start_tls(ca: &super::tls::TestCa) -> MlflowServer {
        Self::start_with(Some(TlsFiles {
            cert: ca.leaf_cert.clone(),
            key: ca.leaf_key.clone(),
            ca: ca.ca_cert.clone(),
        }))
    }

    /// Starts a server whose runs keep their artifacts in `store` directly (`--default-artifact-root`
    /// with `--no-serve-artifacts`), so a run's `artifact_uri` is `<root>/<experiment id>/<run
    /// id>/artifacts` rather than MLflow 3's default proxied `mlflow-artifacts:` URI.
    pub fn start_with_artifacts(store: ArtifactStore) -> MlflowServer {
        Self::start_with_options(None, Some(store))
    }

    fn start_with(tls: Option<TlsFiles>) -> MlflowServer {
        Self::start_with_options(tls, None)
    }

    fn start_with_options(tls: Option<TlsFiles>, artifacts: Option<ArtifactStore>) -> MlflowServer {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("mlflow.db");
        let mut server = MlflowServer {
            process: None,
            port: 0,
            dir,
            db,
            tls,
            artifacts,
        };
        // Another process may take the free port before the server binds it; then it exits.
        for _ in 0..3 {
            server.port = free_port();
            if server.try_start() {
                return server;
            }
        }
        panic!("the MLflow server did not start after 3 tries");
    }

    /// Starts the stopped server again, same port and database.
    pub fn start_again(&mut self) {
        assert!(self.process.is_none(), "the server is running");
        let deadline = Instant::now() + Duration::from_secs(60);
        // The port may still be held for a moment by the killed server's socket.
        while !self.try_start() {
            assert!(
                Instant::now() < deadline,
                "the MLflow server did not start again on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Kills the server's whole process group; the database stays.
    pub fn stop(&mut self) {
        self.process = None;
    }

    fn try_start(&mut self) -> bool {
        let mut cmd = Command::new(tool("venv-mlflow/bin/mlflow"));
        cmd.args(["server", "--backend-store-uri"])
            .arg(format!("sqlite:///{}", self.db.display()))
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--workers", "1"])
            .env("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
            .env_remove("MLFLOW_TRACKING_URI");
        match &self.artifacts {
            Some(store) => {
                cmd.args([
                    "--default-artifact-root",
                    &store.root,
                    "--no-serve-artifacts",
                ])
                .envs(store.env.iter().map(|(k, v)| (k, v)));
            }
            // Proxied (MLflow 3's default), into the temp folder rather than the current one.
            None => {
                cmd.arg("--artifacts-destination")
                    .arg(self.dir.path().join("artifacts"));
            }
        }
        if let Some(tls) = &self.tls {
            cmd.arg("--uvicorn-opts").arg(format!(
                "--ssl-certfile {} --ssl-keyfile {}",
                tls.cert.display(),
                tls.key.display()
            ));
        }
        let mut process = ServerProcess::spawn(&mut cmd, "mlflow server");
        let deadline = Instant::now() + START_LIMIT;
        while Instant::now() < deadline {
            if !process.is_running() {
                return false;
            }
            let ready = std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && (self.tls.is_some()
                    || request(self.port, "GET", "/health", &[], b"").status == 200);
            if ready {
                self.process = Some(process);
                return true;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!("the MLflow server did not answer /health within {START_LIMIT:?}");
    }

    /// `http://127.0.0.1:PORT` (`https://` with TLS).
    pub fn uri(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Everything the server holds for the runs of experiment `name`, read with the real mlflow
    /// client: `{"experiment_id", "runs": [{"run_id", "name", "status", "start_time",
    /// "end_time", "tags", "params", "metrics": {key: [[step, timestamp, value], …]}}]}`, where a
    /// value is a number or `"NaN"`. `{"experiment_id": null}` when there is no such experiment.
    pub fn read(&self, name: &str) -> Value {
        self.client_script("mlflow_read.py", &[name.as_ref()])
    }

    /// The single run of experiment `name` as the real mlflow client shows it to a user, with
    /// its artifacts (`tests/python/mlflow_artifacts.py`): `{"run_id", "artifact_uri", "tags",
    /// "params", "files": {path: size}}`, every artifact file listed recursively; any there are
    /// are downloaded into `download`.
    pub fn read_artifacts(&self, name: &str, download: &std::path::Path) -> Value {
        self.client_script(
            "mlflow_artifacts.py",
            &[name.as_ref(), download.as_os_str()],
        )
    }

    /// As [`read_artifacts`](Self::read_artifacts), for the run named `run_name` of an
    /// experiment that holds several.
    pub fn read_run_artifacts(
        &self,
        name: &str,
        run_name: &str,
        download: &std::path::Path,
    ) -> Value {
        self.client_script(
            "mlflow_artifacts.py",
            &[name.as_ref(), download.as_os_str(), run_name.as_ref()],
        )
    }

    /// Runs a script of `tests/python` with the mlflow venv's python, as `SCRIPT URI ARGS…`, in
    /// an environment that reaches this server (and its artifact store), and parses the JSON it
    /// prints.
    fn client_script(&self, script: &str, args: &[&std::ffi::OsStr]) -> Value {
        let mut cmd = mlflow_python(script);
        if let Some(tls) = &self.tls {
            cmd.env("MLFLOW_TRACKING_SERVER_CERT_PATH", &tls.ca);
        }
        if let Some(store) = &self.artifacts {
            cmd.envs(store.env.iter().map(|(k, v)| (k, v)));
        }
        json_of(cmd.arg(self.uri()).args(args), script)
    }

    /// Polls [`read`](Self::read) until `done` holds or `limit` passes; returns the last read.
    pub fn read_until(&self, name: &str, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let v = self.read(name);
            if done(&v) || Instant::now() > deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// The mlflow venv's python running `tests/python/<script>`, with no MLflow settings inherited
/// and MLflow's telemetry off (tests only ever contact 127.0.0.1).
pub fn mlflow_python(script: &str) -> Command {
    let mut cmd = Command::new(tool("venv-mlflow/bin/python"));
    cmd.arg(super::python::script(script))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("MLFLOW_DISABLE_TELEMETRY", "true")
        .env("DO_NOT_TRACK", "true")
        .env_remove("MLFLOW_TRACKING_URI")
        .env_remove("MLFLOW_RUN_ID")
        .env_remove("MLFLOW_EXPERIMENT_NAME");
    cmd
}

/// Runs `cmd` (a script of `tests/python`) and parses the JSON object it prints last; panics
/// with its stderr when it fails.
pub fn json_of(cmd: &mut Command, script: &str) -> Value {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot start {script}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{script} failed ({})\n--- stdout\n{stdout}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_default();
    serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("{script} did not print JSON ({e}): {stdout}"))
}
