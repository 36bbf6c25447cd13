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

impl Running {
    /// Fails the test, showing the sidecar's log `said`, if the sidecar has exited.
    fn assert_running(&mut self, said: &str) {
        let exited = self.0.as_mut().and_then(|c| c.try_wait().unwrap());
        assert!(
            exited.is_none(),
            "the sidecar exited on a full state folder ({exited:?}):\n{said}"
        );
    }
}

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
    let ran = show(db);
    ran.expect_code(0);
    points_of(&ran.stdout)
}

/// `periscope metrics show EXPERIMENT --json --metastore DB`.
fn show(db: &str) -> crate::harness::Ran {
    run(periscope().args(["metrics", "show", EXPERIMENT, "--json", "--metastore", db]))
}

/// How many points the metastore holds so far: none while the sidecar has not yet made the
/// metastore or the experiment (`metrics show` says which, exit code 3).
fn stored_so_far(db: &str) -> usize {
    let ran = show(db);
    if ran.code == Some(3)
        && (ran.stderr.contains("no metastore at") || ran.stderr.contains("no experiment"))
    {
        return 0;
    }
    ran.expect_code(0);
    points_of(&ran.stdout).len()
}

/// `metrics show --json` output as `(key, step)` → how many times it is there.
fn points_of(stdout: &str) -> std::collections::BTreeMap<(String, i64), usize> {
    let mut out = std::collections::BTreeMap::new();
    for line in stdout.lines() {
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

/// Mounts a 48 MiB tmpfs at `state` (unmounted when dropped), with at most `inodes` files and
/// folders when given.
fn tmpfs(state: &std::path::Path, inodes: Option<u32>) -> Mounted {
    fs::create_dir_all(state).unwrap();
    let mut options = "size=48m".to_string();
    if let Some(n) = inodes {
        options.push_str(&format!(",nr_inodes={n}"));
    }
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &options, "tmpfs"])
        .arg(state)
        .status()
        .expect("cannot run mount");
    assert!(
        mounted.success(),
        "this test mounts a 48 MiB tmpfs as the state folder: run it as root"
    );
    Mounted(state.to_path_buf())
}

/// A sidecar mirrors an event file and follows a metrics file while its state folder (a 48 MiB
/// tmpfs) fills up after the first points are stored; with `restart`, it is killed (`kill -9`)
/// just before and started again on the full folder. It keeps running, says so once in its log
/// and in /readyz and /metrics, refuses MLflow ingest with a retryable 503, and once space
/// returns stores every event and every metric once.
fn full_state_folder(restart: bool) {
    let setup = MetricsSetup::new();
    let state = setup.path("state");
    let _mounted = tmpfs(&state, None);
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
        stored_so_far(&db) == 200 && stored_tree.is_dir() && scalars(&stored_tree) == scalars(&tb)
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
    child.assert_running(&said());

    // Space returns.
    fs::remove_file(&filler).unwrap();
    write_events(&mut events, 300, 100);
    write_metrics(&setup, 300, 100);
    wait("the mirror and the queue never resumed", &|| {
        get("/readyz").status == 200
    });
    let logged = log_metric(mlflow, &run_id, "mlflow/y", 7);
    assert_eq!(logged.status, 200, "{}", logged.body);
    wait("not every metric was stored", &|| stored_so_far(&db) == 801);
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

/// How full a state folder is.
#[derive(Clone, Copy)]
enum Full {
    /// No byte is left; files and folders can still be made (a tmpfs).
    Bytes,
    /// No byte and no file or folder can be made either (like a full ext4 or XFS disk, where a
    /// new folder needs a block).
    BytesAndFiles,
}

/// Mounts a 48 MiB tmpfs at `state` and fills it as `full` says: a state folder already full when
/// Periscope first starts on it. Returns the mount (unmounted when dropped) and the folder whose
/// removal frees the space.
fn full_tmpfs(state: &std::path::Path, full: Full) -> (Mounted, std::path::PathBuf) {
    let mounted = tmpfs(state, matches!(full, Full::BytesAndFiles).then_some(64));
    let filler = state.join("filler");
    fs::create_dir(&filler).unwrap();
    fill(&filler.join("bytes"));
    if let Full::BytesAndFiles = full {
        let mut n = 0;
        while fs::File::create(filler.join(n.to_string())).is_ok() {
            n += 1;
        }
        assert!(
            fs::create_dir(state.join("probe")).is_err(),
            "a folder can still be made"
        );
    }
    assert!(
        fs::write(state.join("probe"), "x").is_err(),
        "the state folder is not full"
    );
    let _ = fs::remove_file(state.join("probe"));
    (mounted, filler)
}

/// `lines` numbered lines `from..from + lines` of `app.log`.
fn log_lines(from: usize, lines: usize) -> String {
    (from..from + lines)
        .map(|i| format!("line {i}\n"))
        .collect()
}

/// The `token` of the claim object at `path`.
fn claim_token(path: &std::path::Path) -> String {
    let claim: serde_json::Value = serde_json::from_slice(&fs::read(path).unwrap()).unwrap();
    claim["token"].as_str().unwrap().to_string()
}

/// A sidecar first started on a state folder that is already full (with nothing of an earlier
/// start in it) keeps running: the probes answer, `/readyz` says 503 and why, `/metrics` says the
/// claim's token is not kept, the MLflow endpoint answers 503, and the worker's folder is claimed
/// with the token in memory. Once space is freed, the token is written to the state folder (the
/// one in the claim, so a restart continues the claim), and every log line, event and metric
/// written meanwhile is stored once.
fn first_start_on_a_full_state_folder(full: Full) {
    let setup = MetricsSetup::new();
    let state = setup.path("state");
    let (_mounted, filler) = full_tmpfs(&state, full);
    let db = format!("sqlite://{}", setup.path("metastore.db").display());
    let (probes, mlflow) = (free_port(), free_port());
    let tb = setup.path("tb");
    let logs = setup.path("logs");
    fs::create_dir_all(&logs).unwrap();
    let mut events = EventWriter::create(&tb).unwrap();
    write_events(&mut events, 0, 100);
    write_metrics(&setup, 0, 100);
    append(&logs.join("app.log"), &log_lines(0, 100));
    let sidecar = || {
        let mut cmd = setup.sidecar(EXPERIMENT);
        cmd.args(["--metastore", &db])
            .args(["--tfevents-interval", "0.2"])
            .arg("--logs")
            .arg(format!("{}/*.log", logs.display()))
            .args(["--listen", &format!("127.0.0.1:{probes}")])
            .args(["--mlflow-listen", &format!("127.0.0.1:{mlflow}")]);
        cmd
    };
    let log = fs::File::create(setup.path("sidecar.log")).unwrap();
    let mut child = Running(Some(sidecar().stderr(log).spawn().unwrap()));
    let said = || fs::read_to_string(setup.path("sidecar.log")).unwrap_or_default();
    // Both listeners answer, and the sidecar has not exited meanwhile.
    let deadline = Instant::now() + Duration::from_secs(20);
    while [probes, mlflow]
        .iter()
        .any(|p| std::net::TcpStream::connect(("127.0.0.1", *p)).is_err())
    {
        child.assert_running(&said());
        assert!(Instant::now() < deadline, "never listened:\n{}", said());
        thread::sleep(Duration::from_millis(100));
    }
    let get = |path: &str| request(probes, "GET", path, &[], b"");
    let worker = setup.path("store").join(EXPERIMENT).join("worker-0");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !worker.join("claim.json").is_file() {
        assert!(Instant::now() < deadline, "never claimed:\n{}", said());
        thread::sleep(Duration::from_millis(100));
    }
    write_events(&mut events, 100, 100);
    write_metrics(&setup, 100, 100);
    append(&logs.join("app.log"), &log_lines(100, 100));
    thread::sleep(Duration::from_secs(2));
    child.assert_running(&said());
    assert_eq!(get("/healthz").status, 200, "{}", said());
    let ready = get("/readyz");
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(ready.body.contains("state folder"), "{}", ready.body);
    let metrics = get("/metrics").body;
    assert!(
        metrics.contains("\nperiscope_claim_token_unkept 1\n"),
        "{metrics}"
    );
    // The MLflow-compatible endpoint cannot keep its runs yet: clients are told to retry.
    let create = request(
        mlflow,
        "POST",
        "/api/2.0/mlflow/runs/create",
        &[("Content-Type", "application/json".into())],
        br#"{"experiment_id":"0"}"#,
    );
    assert_eq!(create.status, 503, "{}", create.body);
    assert!(!state.join("worker-claim-token").exists());

    // Space is freed.
    fs::remove_dir_all(&filler).unwrap();
    write_events(&mut events, 200, 100);
    write_metrics(&setup, 200, 100);
    append(&logs.join("app.log"), &log_lines(200, 100));
    let deadline = Instant::now() + Duration::from_secs(60);
    while get("/readyz").status != 200
        || !get("/metrics")
            .body
            .contains("\nperiscope_claim_token_unkept 0\n")
    {
        assert!(Instant::now() < deadline, "never resumed:\n{}", said());
        thread::sleep(Duration::from_millis(100));
    }
    let run_id = start_endpoint_run(mlflow);
    let logged = log_metric(mlflow, &run_id, "mlflow/y", 7);
    assert_eq!(logged.status, 200, "{}", logged.body);
    fs::write(setup.path("exit-code"), "0\n").unwrap();
    let out = wait_with_timeout(child.0.take().unwrap(), Duration::from_secs(60));
    let said = said();
    assert_eq!(out.status.code(), Some(0), "{said}");

    // The token the state folder keeps now is the one the claim holds: a restart continues it.
    let kept = fs::read_to_string(state.join("worker-claim-token")).unwrap();
    assert_eq!(kept.trim(), claim_token(&worker.join("claim.json")));
    let again = wait_with_timeout(sidecar().spawn().unwrap(), Duration::from_secs(60));
    let said_again = String::from_utf8_lossy(&again.stderr);
    assert_eq!(again.status.code(), Some(0), "{said_again}");
    assert!(
        said_again.contains("continuing the worker's folder this state folder claimed"),
        "{said_again}"
    );
    for said_once in [
        "no room for the worker claim's token",
        "token is kept in the state folder now",
    ] {
        assert_eq!(said.matches(said_once).count(), 1, "said once:\n{said}");
    }
    // Every log line, event and metric, once.
    let stored_log = run(periscope()
        .args(["logs", "cat"])
        .arg(format!("file://{}/logs/app.log", worker.display())));
    stored_log.expect_code(0);
    assert_eq!(stored_log.stdout, log_lines(0, 300));
    assert_eq!(scalars(&worker.join("tfevents")), scalars(&tb));
    let points = stored_points(&db);
    assert_eq!(points.len(), 601, "{points:?}");
    let doubled: Vec<_> = points.iter().filter(|(_, n)| **n != 1).collect();
    assert!(doubled.is_empty(), "stored more than once: {doubled:?}");
}

#[test]
fn a_sidecar_first_started_on_a_full_state_folder_waits_and_then_stores_everything_once() {
    first_start_on_a_full_state_folder(Full::Bytes);
}

#[test]
fn a_sidecar_first_started_where_no_file_or_folder_can_be_made_waits_too() {
    first_start_on_a_full_state_folder(Full::BytesAndFiles);
}

/// `periscope run -- CMD` on a state folder that is already full runs CMD at once (its output
/// goes to its own folder, outside the state folder), and once space is freed stores all of
/// its output, once.
#[test]
fn run_on_a_full_state_folder_runs_the_command_and_stores_its_output_once_space_is_freed() {
    run_on_a_full_state_folder(Full::Bytes);
}

/// As above where the state folder cannot even be made (a full ext4 or XFS disk).
#[test]
fn run_where_its_state_folder_cannot_be_made_runs_the_command_and_stores_its_output_later() {
    run_on_a_full_state_folder(Full::BytesAndFiles);
}

fn run_on_a_full_state_folder(full: Full) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (_mounted, filler) = full_tmpfs(&data.join("state"), full);
    let go = dir.path().join("go");
    let run_dir = data.join("runs").join(EXPERIMENT).join("worker-0");
    // Each half prints 100 lines and logs 100 points of `jsonl/x` to the run's metrics file.
    let half = |from: usize| {
        format!(
            "for i in $(seq {from} {to}); do echo line $i; \
             echo '{{\"key\":\"jsonl/x\",\"value\":'$i',\"step\":'$i',\"timestamp\":'$i'}}' \
             >> {metrics}; done",
            to = from + 99,
            metrics = run_dir.join("metrics.jsonl").display()
        )
    };
    let script = format!(
        "{}; while [ ! -e {go} ]; do sleep 0.1; done; {}",
        half(0),
        half(100),
        go = go.display()
    );
    let child = periscope()
        .args(["run", "--experiment-id", EXPERIMENT, "--data-dir"])
        .arg(&data)
        .args(["--", "sh", "-c", &script])
        .env_remove("PERISCOPE_METASTORE")
        .env_remove("SUBMARINE_TRACKING_URI")
        .env_remove("JOB_ID")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Running(Some(child));
    let deadline = Instant::now() + Duration::from_secs(30);
    let printed = || fs::read_to_string(run_dir.join("stdout.log")).unwrap_or_default();
    while printed() != log_lines(0, 100) {
        assert!(
            Instant::now() < deadline,
            "the command never ran: {:?}",
            printed()
        );
        thread::sleep(Duration::from_millis(100));
    }
    thread::sleep(Duration::from_secs(1));
    fs::remove_dir_all(&filler).unwrap();
    fs::write(&go, "").unwrap();
    let out = wait_with_timeout(child.0.take().unwrap(), Duration::from_secs(90));
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(
        said.contains("no room for the worker claim's token"),
        "{said}"
    );
    let state = data.join("state").join(EXPERIMENT).join("worker-0");
    assert!(state.join("worker-claim-token").is_file(), "{said}");
    let stored = run(periscope().args(["logs", "cat"]).arg(
        data.join("storage")
            .join(EXPERIMENT)
            .join("worker-0/logs/stdout.log"),
    ));
    stored.expect_code(0);
    assert_eq!(stored.stdout, log_lines(0, 200));
    let db = format!("sqlite://{}", data.join("metastore.db").display());
    let points = stored_points(&db);
    assert_eq!(points.len(), 200, "{points:?}");
    let doubled: Vec<_> = points.iter().filter(|(_, n)| **n != 1).collect();
    assert!(doubled.is_empty(), "stored more than once: {doubled:?}");
}

/// `periscope exec --artifacts` on a state folder that stays full: the command runs, and its
/// final save is stored whole and verified (the push state, which only lets a stopped push
/// continue, cannot be written, and the log says so), so the model is not lost; it restores
/// byte for byte.
#[test]
fn exec_on_a_full_state_folder_still_saves_the_artifacts_when_the_command_ends() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (_mounted, _filler) = full_tmpfs(&state, Full::Bytes);
    let (model, store) = (dir.path().join("model"), dir.path().join("store"));
    let weights: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(dir.path().join("weights"), &weights).unwrap();
    let script = format!(
        "mkdir -p {model} && cp {src} {model}/weights.bin && echo trained",
        model = model.display(),
        src = dir.path().join("weights").display()
    );
    let out = run(periscope()
        .arg("exec")
        .arg("--capture-dir")
        .arg(dir.path().join("capture"))
        .arg("--artifacts")
        .arg(&model)
        .arg("--storage")
        .arg(&store)
        .args(["--experiment-id", EXPERIMENT, "--worker", "worker-0"])
        .arg("--state-dir")
        .arg(&state)
        .args(["--", "sh", "-c", &script]));
    out.expect_code(0);
    assert!(out.stdout.contains("trained"), "{}", out.stdout);
    assert!(
        out.stderr
            .contains("cannot write the push state; the push goes on"),
        "{}",
        out.stderr
    );
    let back = dir.path().join("back");
    run(periscope()
        .args(["artifacts", "restore"])
        .arg(&back)
        .arg("--storage")
        .arg(&store)
        .args(["--experiment-id", EXPERIMENT, "--worker", "worker-0"]))
    .expect_code(0);
    assert!(fs::read(back.join("weights.bin")).unwrap() == weights);
}
