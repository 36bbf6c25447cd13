//! A full `--state-dir` while the sidecar mirrors an event file and follows a metrics file: the
//! tf.events mirror and the metrics queue wait (the probes say so), the MLflow-compatible endpoint
//! answers 503 with `Retry-After`, and once space returns every event and every metric is stored
//! once.

use std::fs;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use periscope::tfevents::{EventWriter, ScalarValue};

use crate::harness::metrics::{
    append, log_metric, start_endpoint_run, wait_with_timeout, MetricsSetup,
};
use crate::harness::rawhttp::{request, wait_for_port};
use crate::harness::{free_port, periscope, run};
use crate::ship_logs::Mounted;

const EXPERIMENT: &str = "exp-full";

/// The sidecar, killed if the test fails before it ends.
struct Running(Option<Child>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Appends `lines` lines of `jsonl/x` with steps `from..from + lines` to the metrics file.
fn write_metrics(setup: &MetricsSetup, from: i64, lines: i64) {
    let text: String = (from..from + lines)
        .map(|i| format!("{{\"key\":\"jsonl/x\",\"value\":{i},\"step\":{i},\"timestamp\":{i}}}\n"))
        .collect();
    append(&setup.path("metrics.jsonl"), &text);
}

/// Writes scalars `train/loss` with steps `from..from + n` to the event file and flushes it.
fn write_events(w: &mut EventWriter, from: i64, n: i64) {
    for step in from..from + n {
        w.add_scalar(
            "train/loss",
            step,
            1_700_000_000.0 + step as f64,
            ScalarValue::F32(1.0 / (step + 1) as f32),
        )
        .unwrap();
    }
    w.flush().unwrap();
}

/// `(key, step)` → how many times the metastore holds it.
fn stored_points(db: &str) -> std::collections::BTreeMap<(String, i64), usize> {
    let ran = run(periscope().args(["metrics", "show", EXPERIMENT, "--json", "--metastore", db]));
    ran.expect_code(0);
    let mut out = std::collections::BTreeMap::new();
    for line in ran.stdout.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let key = v["key"].as_str().unwrap().to_string();
        *out.entry((key, v["step"].as_i64().unwrap())).or_insert(0) += 1;
    }
    out
}

/// `periscope tfevents scalars FOLDER`.
fn scalars(folder: &std::path::Path) -> String {
    let ran = run(periscope().args(["tfevents", "scalars"]).arg(folder));
    ran.expect_code(0);
    ran.stdout
}

/// Fills the state folder: `path` takes every byte left.
fn fill(path: &std::path::Path) {
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=64k"])
        .arg(format!("of={}", path.display()))
        .stderr(Stdio::null())
        .status();
}

/// A sidecar mirrors an event file and follows a metrics file while its state folder (a 48 MiB
/// tmpfs) fills up after the first points are stored; with `restart`, it is killed (`kill -9`)
/// just before and started again on the full folder. It keeps running, says so once in its log
/// and in /readyz and /metrics, refuses MLflow ingest with a retryable 503, and once space
/// returns stores every event and every metric once.
fn full_state_folder(restart: bool) {
    let setup = MetricsSetup::new();
    let state = setup.path("state");
    fs::create_dir_all(&state).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=48m", "tmpfs"])
        .arg(&state)
        .status()
        .expect("cannot run mount");
    assert!(
        mounted.success(),
        "this test mounts a 48 MiB tmpfs as the state folder: run it as root"
    );
    let _mounted = Mounted(state.clone());
    // The metastore lives outside the state folder, so delivery can go on while it is full.
    let db = format!("sqlite://{}", setup.path("metastore.db").display());
    let (probes, mlflow) = (free_port(), free_port());
    let tb = setup.path("tb");
    let mut events = EventWriter::create(&tb).unwrap();
    write_events(&mut events, 0, 100);
    write_metrics(&setup, 0, 100);
    let filler = state.join("filler");
    let spawn = || {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(setup.path("sidecar.log"))
            .unwrap();
        let child = setup
            .sidecar(EXPERIMENT)
            .args(["--metastore", &db])
            .args(["--tfevents-interval", "0.2"])
            .args(["--listen", &format!("127.0.0.1:{probes}")])
            .args(["--mlflow-listen", &format!("127.0.0.1:{mlflow}")])
            .stderr(log)
            .spawn()
            .unwrap();
        wait_for_port(probes, "the probes", Duration::from_secs(20));
        wait_for_port(mlflow, "the MLflow endpoint", Duration::from_secs(20));
        Running(Some(child))
    };
    let mut child = spawn();
    let said = || fs::read_to_string(setup.path("sidecar.log")).unwrap_or_default();
    let get = |path: &str| request(probes, "GET", path, &[], b"");
    let wait = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done() {
            let metrics = get("/metrics").body;
            assert!(Instant::now() < deadline, "{what}:\n{metrics}\n{}", said());
            thread::sleep(Duration::from_millis(100));
        }
    };
    let stored_tree = setup
        .path("store")
        .join(EXPERIMENT)
        .join("worker-0/tfevents");
    let run_id = start_endpoint_run(mlflow);
    wait("the first events and metrics were never stored", &|| {
        stored_points(&db).len() == 200
            && stored_tree.is_dir()
            && scalars(&stored_tree) == scalars(&tb)
    });
    if restart {
        drop(child);
        fill(&filler);
        child = spawn();
    } else {
        fill(&filler);
    }
    write_events(&mut events, 100, 100);
    write_metrics(&setup, 100, 100);
    wait(
        "the mirror and the queue never said they cannot write",
        &|| {
            let m = get("/metrics").body;
            m.contains("\nperiscope_tfevents_checkpoint_failing 1\n")
                && m.contains("\nperiscope_metrics_queue_write_failing 1\n")
        },
    );
    let ready = get("/readyz");
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(ready.body.contains("state folder"), "{}", ready.body);
    let refused = log_metric(mlflow, &run_id, "mlflow/y", 7);
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert!(
        refused.head.to_ascii_lowercase().contains("retry-after:"),
        "{}",
        refused.head
    );
    write_events(&mut events, 200, 100);
    write_metrics(&setup, 200, 100);
    thread::sleep(Duration::from_secs(2));
    let running = child.0.as_mut().unwrap().try_wait().unwrap().is_none();
    assert!(
        running,
        "the sidecar exited on a full state folder:\n{}",
        said()
    );

    // Space returns.
    fs::remove_file(&filler).unwrap();
    write_events(&mut events, 300, 100);
    write_metrics(&setup, 300, 100);
    wait("the mirror and the queue never resumed", &|| {
        get("/readyz").status == 200
    });
    let logged = log_metric(mlflow, &run_id, "mlflow/y", 7);
    assert_eq!(logged.status, 200, "{}", logged.body);
    wait("not every metric was stored", &|| {
        stored_points(&db).len() == 801
    });
    fs::write(setup.path("exit-code"), "0\n").unwrap();
    let out = wait_with_timeout(child.0.take().unwrap(), Duration::from_secs(60));
    let said = said();
    assert_eq!(out.status.code(), Some(0), "{said}");

    // Every event, once, in order; every metric, once.
    assert_eq!(scalars(&stored_tree), scalars(&tb));
    let points = stored_points(&db);
    assert_eq!(points.len(), 801, "{points:?}");
    let doubled: Vec<_> = points.iter().filter(|(_, n)| **n != 1).collect();
    assert!(doubled.is_empty(), "stored more than once: {doubled:?}");
    for said_once in [
        "cannot save the tf.events checkpoint",
        "cannot write the metrics queue in the state folder",
    ] {
        assert_eq!(said.matches(said_once).count(), 1, "said once:\n{said}");
    }
}

#[test]
fn a_state_folder_that_fills_makes_the_tfevents_mirror_and_the_metrics_queue_wait() {
    full_state_folder(false);
}

#[test]
fn a_sidecar_restarted_on_a_full_state_folder_waits_too() {
    full_state_folder(true);
}
