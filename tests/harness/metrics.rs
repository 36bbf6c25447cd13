//! What the metrics tests (tests/metrics_sqlite.rs, tests/metrics_mysql.rs) share: a sidecar's
//! folders and command line, the code revision `periscope localize` would have recorded, and
//! helpers to write a growing file and to stop or wait for a sidecar.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use rand::Rng;

use periscope::localized::{Entry, Record, Revision, RevisionKind};

/// The commit `record_code_revision` records, and its (redacted) repository.
pub const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
pub const CODE_REPO: &str = "https://git.example/team/model.git";

/// 1.7e9 s, the writers' base wall time, in milliseconds.
pub const BASE_MS: i64 = 1_700_000_000_000;

/// A sidecar's folders in a temp folder (`tb/` made). Invariant: removed on drop.
pub struct MetricsSetup {
    _dir: tempfile::TempDir,
    pub root: PathBuf,
}

impl MetricsSetup {
    pub fn new() -> MetricsSetup {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        fs::create_dir_all(root.join("tb")).unwrap();
        MetricsSetup { _dir: dir, root }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// `periscope sidecar` for `experiment` and worker-0, reading `metrics.jsonl` and `tb/`,
    /// stopping when `exit-code` appears, with no metastore setting inherited (the test adds
    /// its own) and stderr piped.
    pub fn sidecar(&self, experiment: &str) -> Command {
        self.sidecar_as(experiment, "worker-0")
    }

    /// The same for `worker`.
    pub fn sidecar_as(&self, experiment: &str, worker: &str) -> Command {
        let mut cmd = super::periscope();
        cmd.arg("sidecar")
            .arg("--storage")
            .arg(format!("file://{}", self.path("store").display()))
            .arg("--state-dir")
            .arg(self.path("state"))
            .args(["--experiment-id", experiment, "--worker", worker])
            .arg("--metrics-file")
            .arg(self.path("metrics.jsonl"))
            .arg("--tfevents")
            .arg(self.path("tb"))
            .arg("--code-dir")
            .arg(self.path("code"))
            .arg("--exit-when-file")
            .arg(self.path("exit-code"))
            .args(["--poll-interval", "0.1"])
            .env_remove("SUBMARINE_TENSORBOARD_LOG_DIR")
            .env_remove("SUBMARINE_TRACKING_URI")
            .env_remove("MLFLOW_TRACKING_URI")
            .env_remove("PERISCOPE_METASTORE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd
    }

    /// Records a git checkout of [`COMMIT`] into `code/training-job`, as `periscope localize`
    /// does: the sidecar reports it as params.
    pub fn record_code_revision(&self) {
        let mut record = Record::default();
        record.upsert(Entry {
            into: "training-job".into(),
            url: CODE_REPO.into(),
            kind: "git".into(),
            revision: Revision {
                kind: RevisionKind::Commit,
                id: COMMIT.into(),
            },
            fingerprint: None,
            patterns: Default::default(),
            bytes: 1,
            files: 1,
            seconds: 0.1,
            localized_at: "2026-01-01T00:00:00Z".into(),
        });
        fs::create_dir_all(self.path("code/.periscope")).unwrap();
        record.save(&self.path("code")).unwrap();
    }
}

/// Appends `text` to `path` (created when missing).
pub fn append(path: &Path, text: &str) {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// Waits for `child` to exit; kills it and panics (with its stderr) after `limit`.
pub fn wait_with_timeout(mut child: Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "sidecar did not exit within {limit:?}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// `kill -9` of our child, and reaps it.
pub fn kill9(child: &mut Child) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait();
}

/// Writes `lines` lines of `jsonl/x` (value i/2, step i, timestamp BASE_MS + i) to `path` in a
/// thread, pausing `pause` after every `every` lines; some lines land in two writes, so a reader
/// sees partial lines.
pub fn jsonl_writer(
    path: &Path,
    lines: i64,
    pause: Duration,
    every: i64,
) -> thread::JoinHandle<()> {
    let path = path.to_path_buf();
    thread::spawn(move || {
        let mut rng = rand::rng();
        for i in 0..lines {
            let line = format!(
                "{{\"key\":\"jsonl/x\",\"value\":{},\"step\":{i},\"timestamp\":{}}}\n",
                i as f64 * 0.5,
                BASE_MS + i
            );
            let cut = if i % 7 == 0 {
                line.len() / 2
            } else {
                line.len()
            };
            append(&path, &line[..cut]);
            if cut < line.len() {
                thread::sleep(Duration::from_millis(rng.random_range(0..3)));
                append(&path, &line[cut..]);
            }
            if i % every == 0 {
                thread::sleep(pause);
            }
        }
    })
}

/// While `writer` and a tensorboardX writer of `points` scalars into `tb` run, starts the
/// sidecar `sidecar()` and SIGKILLs it after a random time in `lifetime_ms`, again and again (at
/// least 3 times) until both writers are done and `delivered()` held before a kill: the last
/// start finds points delivered by sidecars killed since. Once the writers are done, each life is
/// half again as long as the one before, so a slow machine gets there too (within 3 minutes).
/// Returns the number of kills.
pub fn kill_while_writing(
    sidecar: impl Fn() -> Command,
    tb: &Path,
    points: i64,
    lifetime_ms: std::ops::Range<u64>,
    writer: thread::JoinHandle<()>,
    delivered: impl Fn() -> bool,
) -> u32 {
    let mut tbx = Command::new(super::python())
        .arg(super::python::script("metrics_write_tbx.py"))
        .arg("stream")
        .arg(tb)
        .arg(points.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut rng = rand::rng();
    let mut kills = 0;
    let mut stretch = 1.0_f64;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let mut child = sidecar().spawn().unwrap();
        let life = rng.random_range(lifetime_ms.clone()) as f64 * stretch;
        thread::sleep(Duration::from_millis(life as u64));
        // Asked only once the writers are done: `delivered` may be slow (a client's start).
        let written = writer.is_finished() && tbx.try_wait().unwrap().is_some();
        let some_delivered = written && delivered();
        kill9(&mut child);
        kills += 1;
        if written {
            if kills >= 3 && some_delivered {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no sidecar delivered anything in {kills} lives"
            );
            stretch *= 1.5;
        }
    }
    writer.join().unwrap();
    assert!(
        tbx.wait().unwrap().success(),
        "the tensorboardX writer failed"
    );
    kills
}

/// Runs `tests/python/metrics_mlflow_client.py` (the real mlflow client) against the ingest
/// endpoint on 127.0.0.1:`port`; panics with its stderr when it fails.
pub fn run_mlflow_client(port: u16) {
    run_mlflow_client_ending(port, None);
}

/// As [`run_mlflow_client`], ending the run with `end_run(status=...)` when `status` is given.
pub fn run_mlflow_client_ending(port: u16, status: Option<&str>) {
    let client = Command::new(super::tool("venv-mlflow/bin/python"))
        .arg(super::python::script("metrics_mlflow_client.py"))
        .arg(format!("http://127.0.0.1:{port}"))
        .args(status)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("MLFLOW_TRACKING_URI")
        .env_remove("MLFLOW_RUN_ID")
        .output()
        .unwrap();
    assert!(
        client.status.success(),
        "the mlflow client failed\n{}",
        String::from_utf8_lossy(&client.stderr)
    );
}

/// Starts a run on the MLflow-compatible endpoint at 127.0.0.1:`port`, as `mlflow.start_run`
/// does, and returns its id (the endpoint refuses run ids it did not make).
pub fn start_endpoint_run(port: u16) -> String {
    let reply = super::rawhttp::request(
        port,
        "POST",
        "/api/2.0/mlflow/runs/create",
        &[("Content-Type", "application/json".into())],
        br#"{"experiment_id":"0"}"#,
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let body = reply.body.trim();
    // The body may come chunked: the JSON object is between the first `{` and the last `}`.
    let json = &body[body.find('{').unwrap()..=body.rfind('}').unwrap()];
    let value: serde_json::Value = serde_json::from_str(json).unwrap();
    value["run"]["info"]["run_id"]
        .as_str()
        .expect("runs/create gives a run id")
        .to_string()
}

/// Logs metric `key` at `step` (its value the step, its timestamp a millisecond per step) to run
/// `run` on the MLflow-compatible endpoint at `port`.
pub fn log_metric(port: u16, run: &str, key: &str, step: i64) -> super::rawhttp::Response {
    let body = format!(
        r#"{{"run_id":"{run}","key":"{key}","value":{step},"timestamp":{},"step":{step}}}"#,
        1_700_000_000_000 + step
    );
    super::rawhttp::request(
        port,
        "POST",
        "/api/2.0/mlflow/runs/log-metric",
        &[("Content-Type", "application/json".into())],
        body.as_bytes(),
    )
}
