//! Several pods of one job, each with a sidecar, sharing one storage: every pod's sidecar finds a
//! worker name of its own (from `JOB_COMPLETION_INDEX`, the training operator's replica labels,
//! what `periscope exec` published, or the hostname), and a pod that would write another pod's
//! worker folder is refused, while a restart of the same pod continues its folder.
//!
//! Each sidecar is the real binary; the storage is a `file://` folder; a pod's shared volume is
//! a temporary folder holding its `train.log` and the exit-code file `periscope exec` writes.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::{periscope, run, Ran};

const EXPERIMENT: &str = "exp-multi";

/// One pod: its shared volume (logs, exit code) and its sidecar's state folder.
struct Pod {
    dir: tempfile::TempDir,
}

impl Pod {
    /// A pod whose training command wrote `line` to `train.log` and has ended.
    fn new(line: &str) -> Pod {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("logs")).unwrap();
        std::fs::write(dir.path().join("logs/train.log"), format!("{line}\n")).unwrap();
        std::fs::write(dir.path().join("logs/exit-code"), "0\n").unwrap();
        Pod { dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// This pod's sidecar shipping to `store`, with no worker name of its own: each test adds
    /// the environment a platform would set.
    fn sidecar(&self, store: &Path) -> Command {
        let mut cmd = periscope();
        cmd.arg("sidecar")
            .arg("--storage")
            .arg(format!("file://{}", store.display()))
            .arg("--logs")
            .arg(format!("{}/*.log", self.path("logs").display()))
            .arg("--state-dir")
            .arg(self.path("state"))
            .arg("--exit-when-file")
            .arg(self.path("logs/exit-code"))
            .arg("--code-dir")
            .arg(self.path("no-code"))
            .args(["--poll-interval", "0.1", "--chunk-age", "0.2"])
            .env("JOB_ID", EXPERIMENT)
            .env_remove("PERISCOPE_WORKER")
            .env_remove("SUBMARINE_TENSORBOARD_LOG_DIR");
        cmd
    }
}

/// What `logs cat` prints for one worker's `train.log`.
fn stored_log(store: &Path, worker: &str) -> Ran {
    let url = format!(
        "file://{}/{EXPERIMENT}/{worker}/logs/train.log",
        store.display()
    );
    run(periscope().args(["logs", "cat", &url]))
}

#[test]
fn two_pods_of_an_indexed_job_store_their_logs_apart() {
    let store = tempfile::tempdir().unwrap();
    let pods = [Pod::new("pod zero"), Pod::new("pod one")];
    for (index, pod) in pods.iter().enumerate() {
        // Kubernetes sets JOB_COMPLETION_INDEX in every container of an Indexed Job's pod.
        run(pod
            .sidecar(store.path())
            .env("JOB_COMPLETION_INDEX", index.to_string()))
        .expect_code(0)
        .expect_output(&format!("worker-{index}"));
    }
    let zero = stored_log(store.path(), "worker-0");
    zero.expect_code(0);
    assert_eq!(zero.stdout, "pod zero\n");
    let one = stored_log(store.path(), "worker-1");
    one.expect_code(0);
    assert_eq!(one.stdout, "pod one\n");
}

#[test]
fn a_pod_that_would_write_another_pods_worker_folder_is_refused() {
    let store = tempfile::tempdir().unwrap();
    let (a, b) = (Pod::new("pod a"), Pod::new("pod b"));
    run(a
        .sidecar(store.path())
        .env("POD_NAME", "training-a")
        .args(["--worker", "worker-0"]))
    .expect_code(0);
    // Another pod with the same worker name (a misconfigured job) would overwrite pod a's log.
    let refused = run(b
        .sidecar(store.path())
        .env("POD_NAME", "training-b")
        .args(["--worker", "worker-0"]));
    refused
        .expect_code(9)
        .expect_output("held by pod `training-a`")
        .expect_output("--worker");
    let log = stored_log(store.path(), "worker-0");
    assert_eq!(log.stdout, "pod a\n", "pod a's log is intact");

    // A restart of pod a (same state folder) continues its folder and ships what it wrote since.
    crate::harness::metrics::append(&a.path("logs/train.log"), "pod a again\n");
    run(a
        .sidecar(store.path())
        .env("POD_NAME", "training-a")
        .args(["--worker", "worker-0"]))
    .expect_code(0)
    .expect_output("continuing the worker's folder");
    let log = stored_log(store.path(), "worker-0");
    assert_eq!(log.stdout, "pod a\npod a again\n");
}

#[test]
fn a_sidecar_names_its_worker_from_labels_exec_or_the_hostname() {
    let store = tempfile::tempdir().unwrap();

    // The training operator's replica labels, passed through the downward API.
    let labelled = Pod::new("labelled");
    run(labelled
        .sidecar(store.path())
        .env("PERISCOPE_REPLICA_TYPE", "Worker")
        .env("PERISCOPE_REPLICA_INDEX", "1"))
    .expect_code(0);
    assert_eq!(stored_log(store.path(), "worker-1").stdout, "labelled\n");

    // The main container sees RANK; `periscope exec` publishes the name before CMD starts.
    let ranked = Pod::new("ranked");
    run(periscope()
        .args(["exec", "--capture-dir"])
        .arg(ranked.path("capture"))
        .args(["--", "true"])
        .env("RANK", "2"))
    .expect_code(0);
    run(ranked
        .sidecar(store.path())
        .arg("--worker-file")
        .arg(ranked.path("capture/worker.json")))
    .expect_code(0)
    .expect_output("published");
    assert_eq!(stored_log(store.path(), "worker-2").stdout, "ranked\n");

    // Nothing names the worker: the hostname does (unique among running pods), never worker-0.
    let bare = Pod::new("bare");
    run(bare.sidecar(store.path()).args([
        "--worker-file",
        "/nonexistent/worker.json",
        "--worker-wait",
        "0.3",
    ]))
    .expect_code(0);
    let host = hostname();
    assert_eq!(stored_log(store.path(), &host).stdout, "bare\n");
    assert_eq!(stored_log(store.path(), "worker-0").code, Some(3));
}

fn hostname() -> String {
    let out = Command::new("hostname").output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}
