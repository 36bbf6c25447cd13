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
        self.sidecar_to(&format!("file://{}", store.display()))
    }

    /// The same, shipping to `storage` (a URL).
    fn sidecar_to(&self, storage: &str) -> Command {
        let mut cmd = periscope();
        cmd.arg("sidecar")
            .arg("--storage")
            .arg(storage)
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

/// The event file both pods' training writes, under the same name, as two pods of one job do.
const EVENT_FILE: &str = "events.out.tfevents.1700000000.trainer";

#[test]
fn two_pods_of_an_indexed_job_store_their_logs_tfevents_and_metrics_apart() {
    let store = tempfile::tempdir().unwrap();
    let shared = tempfile::tempdir().unwrap();
    let metastore = format!("sqlite://{}", shared.path().join("metastore.db").display());
    let pods = [Pod::new("pod zero"), Pod::new("pod one")];
    for (index, pod) in pods.iter().enumerate() {
        // Each pod's training writes train/loss at the same steps and times, under the same file
        // name (5 points in pod 0, 6 in pod 1), and one `acc` point of its own value.
        let written = pod.path("written");
        let points = (5 + index).to_string();
        crate::harness::python::run_script(
            "metrics_write_tbx.py",
            ["stream".as_ref(), written.as_os_str(), points.as_ref()],
        );
        std::fs::create_dir_all(pod.path("tb")).unwrap();
        let file = std::fs::read_dir(&written)
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        std::fs::rename(file.path(), pod.path("tb").join(EVENT_FILE)).unwrap();
        let line = format!(r#"{{"key":"acc","value":{index},"step":0,"timestamp":1700000000000}}"#);
        std::fs::write(pod.path("metrics.jsonl"), format!("{line}\n")).unwrap();
        // Kubernetes sets JOB_COMPLETION_INDEX in every container of an Indexed Job's pod.
        run(pod
            .sidecar(store.path())
            .arg("--tfevents")
            .arg(pod.path("tb"))
            .arg("--metrics-file")
            .arg(pod.path("metrics.jsonl"))
            .args(["--metastore", &metastore])
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

    // Each worker's event file is stored in its own folder.
    for worker in ["worker-0", "worker-1"] {
        let folder = store.path().join(EXPERIMENT).join(worker).join("tfevents");
        let stored: Vec<_> = std::fs::read_dir(&folder)
            .map(|d| d.filter_map(Result::ok).collect())
            .unwrap_or_default();
        assert!(!stored.is_empty(), "{worker}'s event file is not stored");
    }

    // And its rows in the shared metastore are its own: per worker, the points of its own
    // event file and its own `acc`.
    let shown = run(periscope().args([
        "metrics",
        "show",
        EXPERIMENT,
        "--json",
        "--metastore",
        &metastore,
    ]));
    shown.expect_code(0);
    let mut rows: std::collections::BTreeMap<(String, String), Vec<f64>> = Default::default();
    for line in shown.stdout.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let key = (
            v["worker"].as_str().unwrap().to_string(),
            v["key"].as_str().unwrap().to_string(),
        );
        rows.entry(key)
            .or_default()
            .push(v["value"].as_f64().unwrap());
    }
    let expected: std::collections::BTreeMap<(String, String), Vec<f64>> = [
        (("worker-0", "acc"), vec![0.0]),
        (("worker-0", "train/loss"), vec![0.0, 0.5, 1.0, 1.5, 2.0]),
        (("worker-1", "acc"), vec![1.0]),
        (
            ("worker-1", "train/loss"),
            vec![0.0, 0.5, 1.0, 1.5, 2.0, 2.5],
        ),
    ]
    .into_iter()
    .map(|((w, k), v)| ((w.to_string(), k.to_string()), v))
    .collect();
    assert_eq!(rows, expected, "{}", shown.stdout);
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

/// A pod still training: its sidecar runs in the background (no exit-code file yet), with a
/// lease of `lease` seconds, until its first line is stored.
fn start_training(pod: &Pod, store: &Path, name: &str, lease: &str) -> std::process::Child {
    std::fs::remove_file(pod.path("logs/exit-code")).unwrap();
    let child = pod
        .sidecar(store)
        .env("POD_NAME", name)
        .args(["--worker", "worker-0", "--claim-lease", lease])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while stored_log(store, "worker-0").code != Some(0) {
        assert!(
            std::time::Instant::now() < deadline,
            "{name} stored nothing"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    child
}

/// `pod`'s sidecar, named `name`, as worker-0, run to its end.
fn as_worker_0(pod: &Pod, store: &Path, name: &str) -> Ran {
    run(pod
        .sidecar(store)
        .env("POD_NAME", name)
        .args(["--worker", "worker-0"]))
}

/// The generations stored for worker-0's `train.log`.
fn generations(store: &Path) -> Vec<String> {
    let folder = store.join(EXPERIMENT).join("worker-0/logs/train.log");
    let mut found: Vec<String> = std::fs::read_dir(folder)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    found
}

#[test]
fn a_pod_that_replaces_a_killed_one_takes_its_folder_over_once_the_lease_lapses() {
    let store = tempfile::tempdir().unwrap();
    let a = Pod::new("pod a");
    let mut first = start_training(&a, store.path(), "training-a", "1");
    // The node is lost: no drain, no release. The Job controller starts a replacement pod.
    first.kill().unwrap();
    first.wait().unwrap();
    let b = Pod::new("pod b");
    let ran = as_worker_0(&b, store.path(), "training-b");
    ran.expect_code(0)
        .expect_output("waiting up to 1 s for its lease")
        .expect_output("took the worker's folder over");
    // The replacement's log is a new generation beside the first pod's: nothing overwritten.
    assert_eq!(
        stored_log(store.path(), "worker-0").stdout,
        "pod a\npod b\n"
    );
    assert_eq!(generations(store.path()), ["g000001", "g000002"]);
    assert!(store
        .path()
        .join(EXPERIMENT)
        .join("worker-0/claim-2.json")
        .exists());
}

#[test]
fn a_failed_pods_replacement_takes_over_at_once_and_a_finished_worker_is_never_taken() {
    let store = tempfile::tempdir().unwrap();
    let a = Pod::new("pod a");
    std::fs::write(a.path("logs/exit-code"), "3\n").unwrap();
    as_worker_0(&a, store.path(), "training-a")
        .expect_code(0)
        .expect_output("released the worker's folder");
    // Its job failed and everything was stored: the next attempt need not wait.
    let b = Pod::new("pod b");
    let ran = as_worker_0(&b, store.path(), "training-b");
    ran.expect_code(0)
        .expect_output("took the worker's folder over");
    assert!(!ran.stderr.contains("waiting up to"), "{}", ran.stderr);
    assert_eq!(
        stored_log(store.path(), "worker-0").stdout,
        "pod a\npod b\n"
    );

    // Attempt 2 succeeded: the worker is done, and a third pod is refused.
    let c = Pod::new("pod c");
    let refused = as_worker_0(&c, store.path(), "training-c");
    refused
        .expect_code(9)
        .expect_output("held by pod `training-b`")
        .expect_output("whose job succeeded")
        .expect_output("its own experiment id");
    assert_eq!(
        stored_log(store.path(), "worker-0").stdout,
        "pod a\npod b\n"
    );
}

#[test]
fn a_second_pod_under_a_running_pods_worker_name_is_refused_and_the_first_goes_on() {
    let store = tempfile::tempdir().unwrap();
    let a = Pod::new("pod a");
    let first = start_training(&a, store.path(), "training-a", "1");
    let b = Pod::new("pod b");
    let refused = as_worker_0(&b, store.path(), "training-b");
    refused
        .expect_code(9)
        .expect_output("held by pod `training-a`")
        .expect_output("still running")
        .expect_output("--worker");
    // Pod a never noticed: it goes on and drains when its command ends.
    crate::harness::metrics::append(&a.path("logs/train.log"), "pod a goes on\n");
    std::fs::write(a.path("logs/exit-code"), "0\n").unwrap();
    let out = crate::harness::metrics::wait_with_timeout(first, std::time::Duration::from_secs(60));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stored_log(store.path(), "worker-0").stdout,
        "pod a\npod a goes on\n"
    );
    assert_eq!(generations(store.path()), ["g000001"]);
}

#[test]
fn a_pod_cut_off_longer_than_its_lease_finds_it_was_taken_over_and_stops() {
    let store = tempfile::tempdir().unwrap();
    let a = Pod::new("pod a");
    let first = start_training(&a, store.path(), "training-a", "1");
    // The process is frozen (a node under memory pressure, a paused VM) past its lease.
    // SAFETY: signalling the sidecar this test started, by its pid.
    unsafe { libc::kill(first.id() as i32, libc::SIGSTOP) };
    let b = Pod::new("pod b");
    as_worker_0(&b, store.path(), "training-b")
        .expect_code(0)
        .expect_output("took the worker's folder over");
    // SAFETY: as above.
    unsafe { libc::kill(first.id() as i32, libc::SIGCONT) };
    let out = crate::harness::metrics::wait_with_timeout(first, std::time::Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(9), "{stderr}");
    assert!(
        stderr.contains("was taken over by pod `training-b` (attempt 2)"),
        "{stderr}"
    );
    assert_eq!(
        stored_log(store.path(), "worker-0").stdout,
        "pod a\npod b\n"
    );
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

#[test]
fn a_pod_refused_the_folder_after_storage_came_back_wrote_no_rows_meanwhile() {
    let s3 = crate::harness::s3::S3Server::start();
    s3.create_bucket("jobs");
    let proxy = crate::harness::proxy::Proxy::start(([127, 0, 0, 1], s3.port).into());
    let shared = tempfile::tempdir().unwrap();
    let metastore = format!("sqlite://{}", shared.path().join("metastore.db").display());
    let to_s3 = |pod: &Pod, name: &str, value: u32| {
        let line = format!(r#"{{"key":"acc","value":{value},"step":{value},"timestamp":{value}}}"#);
        std::fs::write(pod.path("metrics.jsonl"), format!("{line}\n")).unwrap();
        let mut cmd = pod.sidecar_to("s3://jobs/runs");
        cmd.envs(s3.env())
            .env("AWS_ENDPOINT_URL", proxy.url())
            .env("AWS_ALLOW_HTTP", "true")
            .env("POD_NAME", name)
            .arg("--metrics-file")
            .arg(pod.path("metrics.jsonl"))
            .args(["--metastore", &metastore, "--worker", "worker-0"]);
        cmd
    };
    let a = Pod::new("pod a");
    run(&mut to_s3(&a, "training-a", 1)).expect_code(0);

    // Pod b, misconfigured with pod a's worker name, starts while storage cannot be reached: it
    // cannot see the claim yet, and its training goes on.
    proxy.take_down();
    let b = Pod::new("pod b");
    std::fs::remove_file(b.path("logs/exit-code")).unwrap();
    let child = to_s3(&b, "training-b", 2)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Long enough for its metrics pipeline to read the file and try the metastore.
    std::thread::sleep(std::time::Duration::from_secs(4));
    proxy.bring_up();
    let out = crate::harness::metrics::wait_with_timeout(child, std::time::Duration::from_secs(90));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(9), "{stderr}");
    assert!(stderr.contains("held by pod `training-a`"), "{stderr}");

    // The metastore holds pod a's row only: pod b's waited in its queue and were never merged.
    let shown = run(periscope().args([
        "metrics",
        "show",
        EXPERIMENT,
        "--json",
        "--metastore",
        &metastore,
    ]));
    shown.expect_code(0);
    let values: Vec<f64> = (shown.stdout.lines())
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["value"]
                .as_f64()
                .unwrap()
        })
        .collect();
    assert_eq!(values, [1.0], "{}", shown.stdout);
}
