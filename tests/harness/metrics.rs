//! What the metrics tests (tests/metrics_sqlite.rs, tests/metrics_mysql.rs) share: a sidecar's
//! folders and command line, the code revision `periscope localize` would have recorded, and
//! helpers to write a growing file and to stop or wait for a sidecar.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use periscope::localize::record::{Entry, Record, Revision, RevisionKind};

/// The commit `record_code_revision` records.
pub const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

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
        let mut cmd = super::periscope();
        cmd.arg("sidecar")
            .arg("--storage")
            .arg(format!("file://{}", self.path("store").display()))
            .arg("--state-dir")
            .arg(self.path("state"))
            .args(["--experiment-id", experiment, "--worker", "worker-0"])
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
            url: "https://git.example/team/model.git".into(),
            kind: "git".into(),
            revision: Revision {
                kind: RevisionKind::Commit,
                id: COMMIT.into(),
            },
            fingerprint: None,
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
