//! A script written for MLflow runs unchanged against Periscope's MLflow-compatible endpoint, with
//! the real binary, the real mlflow client (`tests/python/mlflow_*.py`) and real servers:
//! tracking calls answered truly, artifacts of every kind logged, listed and downloaded byte for
//! byte, MLflow 3's logged models loaded back, runs shown by `periscope runs show`; the files in
//! storage (a folder, moto's S3) and in an MLflow tracking server's own artifact store; bad input
//! refused with MLflow's errors and nothing half-stored; a 1 GiB artifact stored once across a
//! `kill -9`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::harness::metrics::{kill9, wait_with_timeout};
use crate::harness::mlflow::{json_of, mlflow_python, MlflowServer};
use crate::harness::rawhttp::request;
use crate::harness::s3::S3Server;
use crate::harness::{free_port, periscope, run, tool};

/// A job's folders and its sidecar, whose endpoint listens on `port`.
struct Job {
    _dir: tempfile::TempDir,
    root: PathBuf,
    experiment: &'static str,
    port: u16,
}

impl Job {
    fn new(experiment: &'static str) -> Job {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        Job {
            _dir: dir,
            root,
            experiment,
            port: free_port(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// `file://` storage in the job's folder.
    fn file_storage(&self) -> String {
        format!("file://{}", self.path("store").display())
    }

    /// The sidecar of worker-0 on `storage`, its endpoint on `port`, stopping when `exit-code`
    /// appears; the metastore is `metastore` (default: SQLite in the state folder).
    fn sidecar(&self, storage: &str, metastore: Option<&str>) -> Command {
        let mut cmd = periscope();
        cmd.args(["sidecar", "--storage", storage])
            .args(["--experiment-id", self.experiment, "--worker", "worker-0"])
            .args(["--mlflow-listen", &format!("127.0.0.1:{}", self.port)])
            .arg("--state-dir")
            .arg(self.path("state"))
            .arg("--code-dir")
            .arg(self.path("no-code"))
            .arg("--exit-when-file")
            .arg(self.path("exit-code"))
            .args(["--poll-interval", "0.1", "--drain-timeout", "300"])
            .env_remove("SUBMARINE_TRACKING_URI")
            .env_remove("PERISCOPE_METASTORE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(m) = metastore {
            cmd.args(["--metastore", m]);
        }
        cmd
    }

    fn uri(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Waits until the endpoint answers `GET /`.
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && request(self.port, "GET", "/", &[], b"").status == 200
            {
                return;
            }
            assert!(Instant::now() < deadline, "the endpoint never answered");
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `tests/python/<script> ARGS` with `MLFLOW_TRACKING_URI` pointing at the endpoint and
    /// returns the JSON it prints.
    fn script(&self, script: &str, args: &[&std::ffi::OsStr]) -> Value {
        json_of(
            mlflow_python(script)
                .args(args)
                .env("MLFLOW_TRACKING_URI", self.uri()),
            script,
        )
    }

    /// The main container exits 0; the sidecar drains and must exit 0. Returns its stderr.
    fn finish(&self, child: Child) -> String {
        fs::write(self.path("exit-code"), "0\n").unwrap();
        let out = wait_with_timeout(child, Duration::from_secs(300));
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        stderr
    }

    /// Nothing is left in the spool: every file received is in storage, nothing half-received.
    fn assert_spool_empty(&self) {
        for sub in ["incoming", "uploads", "pending"] {
            let left = self.spool(sub);
            assert!(left.is_empty(), "spool/{sub}: {left:?}");
        }
    }

    /// `periscope runs show` of the job's experiment, from the SQLite metastore in the state
    /// folder; panics unless it exits 0.
    fn runs_show(&self) -> crate::harness::Ran {
        let shown = run(periscope()
            .args(["runs", "show", self.experiment, "--data-dir"])
            .arg(self.path("state")));
        shown.expect_code(0);
        shown
    }

    /// Files in the spool's folder `sub` (`incoming`, `uploads`, `pending`).
    fn spool(&self, sub: &str) -> Vec<String> {
        match fs::read_dir(self.path("state/mlflow-artifacts").join(sub)) {
            Ok(entries) => entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}

fn sha256_file(path: &Path) -> String {
    hex::encode(Sha256::digest(fs::read(path).unwrap()))
}

/// Every file below `dir`, relative, `/`-separated.
fn files_below(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(
                    p.strip_prefix(dir)
                        .unwrap()
                        .to_string_lossy()
                        .replace('\\', "/"),
                );
            }
        }
    }
    out.sort();
    out
}

/// `periscope metrics show EXPERIMENT --json` as (key, worker) → number of points.
fn series(state: &Path, experiment: &str) -> std::collections::BTreeMap<(String, String), usize> {
    let ran = run(periscope()
        .args(["metrics", "show", experiment, "--json", "--state-dir"])
        .arg(state));
    ran.expect_code(0);
    let mut out = std::collections::BTreeMap::new();
    for line in ran.stdout.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        *out.entry((
            v["key"].as_str().unwrap().to_string(),
            v["worker"].as_str().unwrap().to_string(),
        ))
        .or_insert(0) += 1;
    }
    out
}

#[test]
fn a_script_written_for_mlflow_runs_unchanged_against_a_sidecar_and_its_files_reach_storage() {
    let job = Job::new("exp-dropin");
    let child = job.sidecar(&job.file_storage(), None).spawn().unwrap();
    job.wait_ready();
    let root = request(job.port, "GET", "/", &[], b"");
    assert!(
        root.body.contains("MLflow-compatible") && root.head.contains("application/json"),
        "GET / says what this is: {}",
        root.body
    );
    // The script asserts what the client reads back (see its docstring).
    let out = job.script("mlflow_dropin.py", &[job.path("work").as_os_str()]);
    let run_id = out["run_id"].as_str().unwrap();
    let child_id = out["child_id"].as_str().unwrap();
    assert_ne!(run_id, child_id, "one run per start_run");
    job.finish(child);

    // Every file is in storage, byte for byte, and none is left in the spool.
    let folder = job
        .path("store/exp-dropin/worker-0/mlflow")
        .join(run_id)
        .join("artifacts");
    let stored = files_below(&folder);
    let logged: Vec<String> = out["sha256"].as_object().unwrap().keys().cloned().collect();
    assert_eq!(stored, logged, "stored files");
    for (path, sha) in out["sha256"].as_object().unwrap() {
        assert_eq!(
            sha256_file(&folder.join(path)),
            sha.as_str().unwrap(),
            "{path}"
        );
    }
    job.assert_spool_empty();

    // The runs and what they hold, as `runs show` prints them from the SQLite metastore.
    let shown = job.runs_show();
    for needle in [
        "trainer",
        run_id,
        "fold-1",
        child_id,
        "dropin",
        "worker-0/2",
        "FINISHED",
        "lr=0.01",
        "optimizer=adam",
        "team=ml",
        "checkpoints/weights.bin",
        "tree/sub/b.csv",
        "artifacts: 8 files",
    ] {
        shown.expect_output(needle);
    }
    shown.refute_output("scratch=x");
    // Metrics of each run under the run's own worker index.
    let series = series(&job.path("state"), "exp-dropin");
    assert_eq!(series[&("loss".into(), "worker-0".into())], 5, "{series:?}");
    assert_eq!(
        series[&("fold_loss".into(), "worker-0/2".into())],
        1,
        "{series:?}"
    );
}

#[test]
fn under_periscope_run_sklearn_autolog_loads_back_and_runs_show_lists_the_runs() {
    let data = tempfile::tempdir().unwrap();
    let python = tool("venv-mlflow/bin/python");
    let script = |name: &str| crate::harness::python::script(name);
    let command = format!(
        "{py} {dropin} {work} && {py} {sklearn}",
        py = python.display(),
        dropin = script("mlflow_dropin.py").display(),
        work = data.path().join("work").display(),
        sklearn = script("mlflow_sklearn.py").display(),
    );
    let ran = run(periscope()
        .args(["run", "--experiment-id", "exp-run-dropin", "--data-dir"])
        .arg(data.path())
        .env("MLFLOW_DISABLE_TELEMETRY", "true")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .args(["--", "sh", "-c", &command]));
    ran.expect_code(0);
    let printed: Vec<Value> = ran
        .stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(printed.len(), 2, "both scripts ran:\n{}", ran.stdout);
    let sklearn = &printed[1];
    let fit = sklearn["run_id"].as_str().unwrap();
    assert_eq!(sklearn["params"]["fit_intercept"], "True", "{sklearn}");

    let shown = run(periscope()
        .args(["runs", "show", "exp-run-dropin", "--data-dir"])
        .arg(data.path()));
    shown.expect_code(0);
    for needle in [
        "trainer",
        "fold-1",
        "fit",
        fit,
        "sklearn-autolog",
        "fit_intercept=True",
        "estimator_name=LinearRegression",
        "model/MLmodel",
        "explicit/MLmodel",
        "estimator.html",
    ] {
        shown.expect_output(needle);
    }
    // The autologged model's files are in storage, where the metastore says.
    let models = data
        .path()
        .join("storage/exp-run-dropin/worker-0/mlflow/models");
    let stored = files_below(&models);
    assert_eq!(
        stored
            .iter()
            .filter(|f| f.ends_with("/artifacts/MLmodel"))
            .count(),
        2,
        "{stored:?}"
    );
}

#[test]
fn with_an_mlflow_server_as_metastore_its_own_api_lists_the_scripts_runs_and_files() {
    let server = MlflowServer::start();
    let job = Job::new("exp-dropin-server");
    let child = job
        .sidecar(
            &job.file_storage(),
            Some(&format!("mlflow+{}", server.uri())),
        )
        .spawn()
        .unwrap();
    job.wait_ready();
    let out = job.script("mlflow_dropin.py", &[job.path("work").as_os_str()]);
    job.finish(child);

    let download = job.path("from-server");
    let trainer = server.read_run_artifacts("dropin", "trainer", &download);
    assert_eq!(
        trainer["files"], out["artifacts"],
        "the server lists the same files"
    );
    for (path, sha) in out["sha256"].as_object().unwrap() {
        assert_eq!(
            sha256_file(&download.join(path)),
            sha.as_str().unwrap(),
            "{path} downloaded from the server"
        );
    }
    let tags = &trainer["tags"];
    assert_eq!(tags["team"], "ml", "{tags}");
    assert_eq!(tags["owner"], "alice", "{tags}");
    assert!(tags.get("scratch").is_none(), "the deleted tag: {tags}");
    assert_eq!(tags["periscope.run_id"], out["run_id"], "{tags}");
    assert_eq!(tags["periscope.worker"], "worker-0", "{tags}");
    assert_eq!(trainer["params"]["lr"], "0.01");
    assert_eq!(trainer["metrics"]["loss"], 0.2);
    let fold = server.read_run_artifacts("dropin", "fold-1", &job.path("fold"));
    assert_eq!(
        fold["tags"]["mlflow.parentRunId"], trainer["run_id"],
        "a nested run names its parent's server run"
    );
    let history = server.read("dropin");
    let run = history["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "trainer")
        .unwrap();
    assert_eq!(run["status"], "FINISHED");
    assert_eq!(run["metrics"]["loss"].as_array().unwrap().len(), 5, "{run}");
}

/// A tmpfs mounted for the life of the guard.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, mib: u64) -> Tmpfs {
        fs::create_dir_all(dir).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("cannot run mount");
        assert!(
            status.success(),
            "this test mounts a small tmpfs to fill a disk: run it as root"
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn bad_input_is_refused_with_mlflows_errors_and_nothing_is_half_stored() {
    let job = Job::new("exp-bad");
    // The state folder (queue, registry, spool) on a 48 MiB disk; storage elsewhere.
    let _disk = Tmpfs::mount(&job.path("state"), 48);
    let child = job.sidecar(&job.file_storage(), None).spawn().unwrap();
    job.wait_ready();
    let out = job.script(
        "mlflow_bad_input.py",
        &[job.path("work").as_os_str(), "100".as_ref()],
    );
    for attempt in ["single", "multipart"] {
        let e = out[attempt].as_str().unwrap_or_else(|| {
            panic!("logging 100 MiB onto a 48 MiB disk must fail ({attempt}): {out}")
        });
        assert!(
            e.contains("RESOURCE_EXHAUSTED") && e.contains("free space"),
            "{attempt}: {e}"
        );
    }
    let (experiment, run_id) = (
        out["experiment_id"].as_str().unwrap(),
        out["run_id"].as_str().unwrap(),
    );
    let base = format!("/api/2.0/mlflow-artifacts/artifacts/{experiment}/{run_id}/artifacts");
    // Each is refused with its status and MLflow's error code.
    let refused = |target: String, status: u16, code: &str| {
        let r = request(job.port, "PUT", &target, &[], b"escaped");
        assert_eq!(r.status, status, "{target}: {}", r.body);
        assert!(r.body.contains(code), "{target}: {}", r.body);
    };
    for target in [
        format!("{base}/../../escape.txt"),
        format!("{base}/%2E%2E/%2E%2E/escape.txt"),
        format!("{base}//tmp/escape.txt"),
        format!("{base}/a/./escape.txt"),
    ] {
        refused(target, 400, "INVALID_PARAMETER_VALUE");
    }
    let other_run = "0123456789abcdef0123456789abcdef";
    for target in [
        format!(
            "/api/2.0/mlflow-artifacts/artifacts/{experiment}/{other_run}/artifacts/escape.txt"
        ),
        format!("/api/2.0/mlflow-artifacts/artifacts/999/{run_id}/artifacts/escape.txt"),
    ] {
        refused(target, 404, "RESOURCE_DOES_NOT_EXIST");
    }
    let body = format!(r#"{{"run_id":"{other_run}","key":"m","value":1}}"#);
    let r = request(
        job.port,
        "POST",
        "/api/2.0/mlflow/runs/log-metric",
        &[],
        body.as_bytes(),
    );
    assert_eq!(r.status, 404, "a run id of another run: {}", r.body);
    job.finish(child);

    // Nothing half-stored: the spool is empty, storage holds the small file only (beside the
    // worker folder's claim and lease).
    job.assert_spool_empty();
    let stored = files_below(&job.path("store"));
    assert_eq!(
        stored,
        [
            "exp-bad/worker-0/claim.json".to_string(),
            "exp-bad/worker-0/lease.json".to_string(),
            format!("exp-bad/worker-0/mlflow/{run_id}/artifacts/small.txt")
        ],
        "only the file that fitted was stored"
    );
    assert!(!job.root.join("escape.txt").exists());
}

#[test]
fn the_endpoint_holds_mlflows_limits_and_answers_in_mlflows_json() {
    let job = Job::new("exp-limits");
    let child = job.sidecar(&job.file_storage(), None).spawn().unwrap();
    job.wait_ready();
    let call = |method: &str, path: &str, body: &str| {
        request(
            job.port,
            method,
            &format!("/api/2.0/mlflow/{path}"),
            &[("Content-Type", "application/json".into())],
            body.as_bytes(),
        )
    };
    let created = call("POST", "runs/create", r#"{"run_name":"limits"}"#);
    assert_eq!(created.status, 200, "{}", created.body);
    let created: Value = serde_json::from_str(&created.body).unwrap();
    let run = created["run"]["info"]["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    let refused = |path: &str, body: String, what: &str| {
        let r = call("POST", path, &body);
        assert_eq!(r.status, 400, "{what}: {}", r.body);
        let v: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["error_code"], "INVALID_PARAMETER_VALUE", "{what}: {v}");
        v["message"].as_str().unwrap().to_string()
    };
    let accepted = |path: &str, body: String, what: &str| {
        let r = call("POST", path, &body);
        assert_eq!(r.status, 200, "{what}: {}", r.body);
    };
    let key = |n: usize| "k".repeat(n);
    accepted(
        "runs/log-metric",
        format!(
            r#"{{"run_id":"{run}","key":"{}","value":1,"timestamp":1700000000000,"step":0}}"#,
            key(250)
        ),
        "a 250-character key",
    );
    let m = refused(
        "runs/log-metric",
        format!(r#"{{"run_id":"{run}","key":"{}","value":1}}"#, key(251)),
        "a 251-character key",
    );
    assert!(m.contains("250"), "{m}");
    refused(
        "runs/log-batch",
        format!(
            r#"{{"run_id":"{run}","metrics":[{{"key":"{}","value":1,"timestamp":1,"step":0}}]}}"#,
            key(70_000)
        ),
        "a 70,000-character key in a batch",
    );
    accepted(
        "runs/log-parameter",
        format!(
            r#"{{"run_id":"{run}","key":"p","value":"{}"}}"#,
            "v".repeat(6000)
        ),
        "a 6,000-character param",
    );
    refused(
        "runs/log-parameter",
        format!(
            r#"{{"run_id":"{run}","key":"q","value":"{}"}}"#,
            "v".repeat(6001)
        ),
        "a 6,001-character param",
    );
    refused(
        "runs/set-tag",
        format!(
            r#"{{"run_id":"{run}","key":"t","value":"{}"}}"#,
            "v".repeat(8001)
        ),
        "an 8,001-character tag",
    );
    refused(
        "runs/log-parameter",
        format!(r#"{{"run_id":"{run}","key":"p","value":"changed"}}"#),
        "a param that would change",
    );
    // int64 fields as strings, as MLflow's Java client sends them.
    accepted(
        "runs/log-metric",
        format!(
            r#"{{"run_id":"{run}","key":"java","value":2.5,"timestamp":"1700000000007","step":"7"}}"#
        ),
        "an int64 sent as a JSON string",
    );
    let history = call(
        "GET",
        &format!("metrics/get-history?run_id={run}&metric_key=java"),
        "",
    );
    let history: Value = serde_json::from_str(&history.body).unwrap();
    assert_eq!(history["metrics"][0]["step"], 7, "{history}");
    // A body over the limit: MLflow's JSON error, not plain text.
    let huge = format!(
        r#"{{"run_id":"{run}","tags":[{{"key":"big","value":"{}"}}]}}"#,
        "x".repeat(3 << 20)
    );
    let r = call("POST", "runs/log-batch", &huge);
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(
        r.head.to_ascii_lowercase().contains("application/json"),
        "{}",
        r.head
    );
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["error_code"], "REQUEST_LIMIT_EXCEEDED", "{v}");
    // A filter outside the grammar, and routes that are not served.
    let m = refused(
        "runs/search",
        r#"{"experiment_ids":["0"],"filter":"metrics.a < 1 OR metrics.a > 2"}"#.into(),
        "OR in a filter",
    );
    assert!(m.contains("supports filters") && m.contains("OR"), "{m}");
    let r = call("POST", "registered-models/create", r#"{"name":"m"}"#);
    assert_eq!(r.status, 501, "{}", r.body);
    assert!(
        r.body.contains("NOT_IMPLEMENTED") && r.body.contains("registered-models/create"),
        "{}",
        r.body
    );
    let r = request(job.port, "GET", "/nothing-here", &[], b"");
    assert_eq!(r.status, 404);
    assert!(r.body.contains("ENDPOINT_NOT_FOUND"), "{}", r.body);
    job.finish(child);

    let series = series(&job.path("state"), "exp-limits");
    assert_eq!(
        series.get(&(key(250), "worker-0".into())),
        Some(&1),
        "{series:?}"
    );
    assert_eq!(series.get(&("java".into(), "worker-0".into())), Some(&1));
    assert_eq!(series.len(), 2, "nothing refused was stored: {series:?}");
}

#[test]
fn a_1_gib_artifact_reaches_s3_once_across_a_kill_9_of_the_sidecar() {
    const BUCKET: &str = "models";
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    let job = Job::new("exp-big");
    let storage = format!("s3://{BUCKET}/jobs");
    let start = || job.sidecar(&storage, None).envs(s3.env()).spawn().unwrap();
    let mut first = start();
    job.wait_ready();
    let out = job.script(
        "mlflow_big_artifact.py",
        &[job.path("work").as_os_str(), "1024".as_ref()],
    );
    let run_id = out["run_id"].as_str().unwrap();
    // log_artifact returned: the file is durable in the spool. Kill the sidecar once its upload
    // to S3 has stored a few parts.
    let journal = |job: &Job| {
        job.spool("pending")
            .into_iter()
            .find(|f| f.ends_with(".upload.json"))
            .and_then(|f| fs::read(job.path("state/mlflow-artifacts/pending").join(f)).ok())
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let parts = journal(&job).map_or(0, |j| j["parts"].as_object().map_or(0, |p| p.len()));
        if parts >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the upload to S3 never got going"
        );
        thread::sleep(Duration::from_millis(50));
    }
    kill9(&mut first);
    let key = format!("jobs/exp-big/worker-0/mlflow/{run_id}/artifacts/big.bin");
    assert!(
        !s3.list(BUCKET, "jobs/").iter().any(|(k, _)| *k == key),
        "the object is not complete before the restart"
    );

    let second = start();
    job.wait_ready();
    let stderr = job.finish(second);
    assert!(
        stderr.contains("continuing the multipart upload"),
        "the restart continues the upload: {stderr}"
    );
    let objects: Vec<String> = s3
        .list(BUCKET, "jobs/")
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| k.contains("/mlflow/"))
        .collect();
    assert_eq!(objects, std::slice::from_ref(&key), "stored once");
    let stored = json_of(
        mlflow_python("s3_sha256.py")
            .args([BUCKET, &key])
            .envs(s3.env()),
        "s3_sha256.py",
    );
    assert_eq!(stored["size"], out["size"]);
    assert_eq!(stored["sha256"], out["sha256"], "byte-identical in storage");
    job.assert_spool_empty();
    job.runs_show().expect_output("artifacts: 1 files, 1.0 GiB");
}

#[test]
fn with_submarines_mariadb_as_metastore_the_scripts_run_and_where_its_files_are_are_recorded() {
    let db = crate::harness::mariadb::MariaDb::start_with_submarine_tables();
    let job = Job::new("exp-dropin-maria");
    let child = job
        .sidecar(&job.file_storage(), Some(&db.url()))
        .spawn()
        .unwrap();
    job.wait_ready();
    let out = job.script(
        "mlflow_big_artifact.py",
        &[job.path("work").as_os_str(), "1".as_ref()],
    );
    let run_id = out["run_id"].as_str().unwrap();
    job.finish(child);
    let params = db.sql(
        "SELECT `key`, value, worker_index FROM param \
         WHERE id = 'exp-dropin-maria' AND `key` LIKE 'mlflow.%' ORDER BY `key`",
    );
    let folder = format!(
        "file://{}/exp-dropin-maria/worker-0/mlflow/{run_id}/artifacts/",
        job.path("store").display()
    );
    assert_eq!(
        params.lines().collect::<Vec<_>>(),
        [
            format!("mlflow.artifacts\t{folder}\tworker-0"),
            "mlflow.experiment\tbig\tworker-0".to_string(),
            format!("mlflow.run_id\t{run_id}\tworker-0"),
            "mlflow.run_name\tbig\tworker-0".to_string(),
        ],
        "{params}"
    );
    // The recorded folder holds the file, byte for byte.
    let stored = job
        .path("store/exp-dropin-maria/worker-0/mlflow")
        .join(run_id)
        .join("artifacts/big.bin");
    assert_eq!(sha256_file(&stored), out["sha256"].as_str().unwrap());
}
