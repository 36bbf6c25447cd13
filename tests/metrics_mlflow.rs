//! Tracking metrics into a real MLflow tracking server (`mlflow server`, SQLite backend, on
//! 127.0.0.1) with the real binary: scalars written by tensorboardX, lines of a JSONL file and
//! calls of the real mlflow client to the sidecar's ingest endpoint (into a run of their own)
//! arrive exactly once with their step, value, timestamp and NaN, with the code revision as
//! params and MLflow's source tags, and the run ends FINISHED or FAILED from the exit-code file; across a 20 s outage of
//! the server and across `kill -9` of the sidecar, in the same run. Everything is read back
//! through the server with the real mlflow client (`tests/python/mlflow_read.py`).
//!
//! MLflow's SQL stores keep ±Infinity as ±1.7976931348623157e308 (the largest double), so that
//! is what comes back for them; NaN comes back as NaN.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::thread;
use std::time::{Duration, Instant};

use periscope::job::JobIdentity;
use periscope::metrics::mlflow::{MlflowSettings, MlflowSink, MlflowUrl};
use periscope::metrics::model::{Item, Metric, Param, RunStatus, Tag};
use periscope::metrics::Sink;
use serde_json::Value;

use crate::harness::metrics::{
    append, jsonl_writer, kill_while_writing, run_mlflow_client, wait_with_timeout, MetricsSetup,
    BASE_MS, CODE_REPO, COMMIT as CODE_COMMIT,
};
use crate::harness::mlflow::MlflowServer;

/// A point as read back: (step, timestamp, value), the value a number or "NaN".
type Point = (i64, i64, Value);

/// One sidecar setup in a temp folder, writing to `server`.
struct Setup {
    base: MetricsSetup,
    /// The server, `http://127.0.0.1:PORT`.
    uri: String,
    experiment: &'static str,
}

impl Setup {
    fn new(server: &MlflowServer, experiment: &'static str) -> Setup {
        Setup {
            base: MetricsSetup::new(),
            uri: server.uri(),
            experiment,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.base.path(name)
    }

    /// The sidecar with `--metastore mlflow+http://…`.
    fn sidecar(&self) -> Command {
        let mut cmd = self.sidecar_without_metastore();
        cmd.args(["--metastore", &format!("mlflow+{}", self.uri)]);
        cmd
    }

    /// The sidecar finding the server in `MLFLOW_TRACKING_URI`, as in a pod.
    fn sidecar_from_env(&self) -> Command {
        let mut cmd = self.sidecar_without_metastore();
        cmd.env("MLFLOW_TRACKING_URI", &self.uri);
        cmd
    }

    fn sidecar_without_metastore(&self) -> Command {
        let mut cmd = self.base.sidecar(self.experiment);
        // An outage or a restart takes longer to catch up on than the default 20 s allows.
        cmd.args(["--drain-timeout", "120"])
            .env_remove("MLFLOW_TRACKING_TOKEN");
        cmd
    }

    /// Waits for the sidecar to exit 0 (within `limit`) and returns its stderr, or panics with
    /// it.
    fn expect_success(&self, child: Child, limit: Duration) -> String {
        let out = wait_with_timeout(child, limit);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        stderr
    }
}

/// The single run of the experiment (panics unless there is exactly one).
fn only_run(data: &Value) -> &Value {
    let runs = data["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 1, "exactly one run: {data}");
    &runs[0]
}

/// A metric's points, as read back.
fn points(run: &Value, key: &str) -> Vec<Point> {
    run["metrics"][key]
        .as_array()
        .unwrap_or_else(|| panic!("no metric {key}: {}", run["metrics"]))
        .iter()
        .map(|p| (p[0].as_i64().unwrap(), p[1].as_i64().unwrap(), p[2].clone()))
        .collect()
}

fn count(data: &Value, key: &str) -> usize {
    data["runs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| r["metrics"][key].as_array().map_or(0, Vec::len))
        .sum()
}

fn num(v: f64) -> Value {
    serde_json::json!(v)
}

fn nan() -> Value {
    Value::String("NaN".into())
}

#[test]
fn tensorboardx_jsonl_and_the_mlflow_client_arrive_once_with_params_tags_and_status() {
    let server = MlflowServer::start();
    let s = Setup::new(&server, "exp-e2e");
    s.base.record_code_revision();
    let jsonl = s.path("metrics.jsonl");
    append(
        &jsonl,
        &format!(
            "{{\"key\":\"jsonl/loss\",\"value\":0.5,\"step\":0,\"timestamp\":{BASE_MS}}}\n\
             {{\"key\":\"jsonl/loss\",\"value\":NaN,\"step\":1,\"timestamp\":{}}}\n\
             {{\"key\":\"jsonl/loss\",\"value\":\"-Infinity\",\"step\":2,\"timestamp\":{}}}\n",
            BASE_MS + 1,
            BASE_MS + 2
        ),
    );
    let port = crate::harness::free_port();
    let child = s
        .sidecar()
        .args(["--mlflow-listen", &format!("127.0.0.1:{port}")])
        .env("MLFLOW_EXPERIMENT_NAME", "periscope-e2e")
        // Sent as a Bearer token (this server does not check it) and never logged.
        .env("MLFLOW_TRACKING_TOKEN", "tok-5ecret-value")
        .spawn()
        .unwrap();
    crate::harness::python::run_script(
        "metrics_write_tbx.py",
        ["basic".as_ref(), s.path("tb").as_os_str()],
    );
    run_mlflow_client(port);
    fs::write(s.path("exit-code"), "0\n").unwrap();
    let stderr = s.expect_success(child, Duration::from_secs(180));
    assert!(
        !stderr.contains("tok-5ecret"),
        "the token was logged:\n{stderr}"
    );
    assert!(stderr.contains("MLflow run"), "{stderr}");

    // Nothing was named after the Periscope experiment id: MLFLOW_EXPERIMENT_NAME won.
    assert_eq!(server.read("exp-e2e")["experiment_id"], Value::Null);
    let data = server.read("periscope-e2e");
    let run = only_run(&data);
    assert_eq!(run["name"], "worker-0");
    assert_eq!(run["status"], "FINISHED");
    assert!(run["end_time"].as_i64().unwrap() > 0, "{run}");
    let tags = &run["tags"];
    assert_eq!(tags["periscope.worker"], "worker-0");
    assert_eq!(tags["periscope.experiment"], "exp-e2e");
    assert_eq!(tags["mlflow.runName"], "worker-0");
    assert_eq!(tags["mlflow.source.git.commit"], CODE_COMMIT);
    assert_eq!(tags["mlflow.source.git.repoURL"], CODE_REPO);
    let params = &run["params"];
    assert_eq!(params["code.training-job.revision"], CODE_COMMIT);
    assert_eq!(params["code.training-job.revision_kind"], "commit");

    // (c) the JSONL file.
    assert_eq!(
        points(run, "jsonl/loss"),
        [
            (0, BASE_MS, num(0.5)),
            (1, BASE_MS + 1, nan()),
            (2, BASE_MS + 2, num(-f64::MAX))
        ]
    );
    // (a) tensorboardX: MLflow cannot delete points, so the restart at step 20 (a purge in
    // TensorBoard) keeps the first writer's 20..29 beside the restarted writer's 20..24.
    let mut loss: Vec<Point> = (0..30)
        .map(|step| {
            let v = match step {
                5 => nan(),
                6 => num(f64::MAX),
                7 => num(-f64::MAX),
                _ => num(step as f64 * 0.25),
            };
            (step, BASE_MS + step * 10, v)
        })
        .collect();
    loss.extend(
        (20..25).map(|step| (step, BASE_MS + 10_000 + step * 10, num(100.0 + step as f64))),
    );
    loss.sort_by_key(|p| (p.0, p.1));
    assert_eq!(points(run, "train/loss"), loss);
    let acc: Vec<Point> = (0..5)
        .map(|step| (step, BASE_MS + step * 10, num(step as f64 / 8.0)))
        .collect();
    assert_eq!(points(run, "eval/acc"), acc);
    let keys: Vec<&String> = run["metrics"].as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 3, "{keys:?}");

    // (b) the real mlflow client through the ingest endpoint: its own run, in the experiment the
    // script named, tagged with the worker it ran beside.
    let data = server.read("whatever-the-script-calls-it");
    let script = only_run(&data);
    assert_eq!(script["status"], "FINISHED", "{script}");
    assert_eq!(script["tags"]["team"], "ml", "the client's tag: {script}");
    assert_eq!(script["tags"]["periscope.worker"], "worker-0");
    assert_eq!(script["tags"]["periscope.experiment"], "exp-e2e");
    assert_eq!(script["params"]["lr"], "0.01");
    assert_eq!(points(script, "client/nan"), [(0, BASE_MS, nan())]);
    assert_eq!(points(script, "client/inf"), [(1, BASE_MS, num(f64::MAX))]);
    let client_loss: Vec<Point> = (0..2500)
        .map(|i| (i, BASE_MS + i, num(i as f64 * 0.25)))
        .collect();
    assert_eq!(points(script, "client/loss"), client_loss);
}

#[test]
fn the_server_from_mlflow_tracking_uri_down_for_20_s_mid_run_loses_nothing() {
    let mut server = MlflowServer::start();
    let s = Setup::new(&server, "exp-outage");
    const LINES: i64 = 600;
    let jsonl = s.path("metrics.jsonl");
    // About one line every 50 ms: the writer is still writing throughout the outage.
    let writer = jsonl_writer(&jsonl, LINES, Duration::from_millis(50), 1);
    let child = s.sidecar_from_env().spawn().unwrap();
    let before = server.read_until("exp-outage", Duration::from_secs(60), |d| {
        count(d, "jsonl/x") > 0
    });
    assert!(
        count(&before, "jsonl/x") > 0,
        "nothing arrived before the outage"
    );
    server.stop();
    let stopped_at = Instant::now();
    assert!(
        !writer.is_finished(),
        "the writer must still be writing while the server is down"
    );
    thread::sleep(Duration::from_secs(20));
    server.start_again();
    let restarted_after = stopped_at.elapsed();
    writer.join().unwrap();
    fs::write(s.path("exit-code"), "0\n").unwrap();
    s.expect_success(child, Duration::from_secs(180));

    let data = server.read("exp-outage");
    let run = only_run(&data);
    let expected: Vec<Point> = (0..LINES)
        .map(|i| (i, BASE_MS + i, num(i as f64 * 0.5)))
        .collect();
    assert_eq!(
        points(run, "jsonl/x"),
        expected,
        "after an outage of {restarted_after:?}"
    );
    assert_eq!(run["status"], "FINISHED");
}

#[test]
fn kill_9_and_restart_mid_stream_reuses_the_run_and_loses_and_doubles_nothing() {
    let server = MlflowServer::start();
    let s = Setup::new(&server, "exp-kill");
    let jsonl = s.path("metrics.jsonl");
    const LINES: i64 = 1500;
    const POINTS: i64 = 600;
    let writer = jsonl_writer(&jsonl, LINES, Duration::from_millis(15), 10);
    // Longer lives than against SQLite: each start talks to a server over HTTP first.
    // The killed sidecars delivered some of it already, so the last one redelivers what the
    // queue had not recorded as delivered.
    let kills = kill_while_writing(
        || s.sidecar(),
        &s.path("tb"),
        POINTS,
        300..1200,
        writer,
        || {
            let midway = server.read("exp-kill");
            count(&midway, "jsonl/x") + count(&midway, "train/loss") > 0
        },
    );
    fs::write(s.path("exit-code"), "1\n").unwrap();
    s.expect_success(s.sidecar().spawn().unwrap(), Duration::from_secs(180));

    let data = server.read("exp-kill");
    let run = only_run(&data);
    let expected: Vec<Point> = (0..LINES)
        .map(|i| (i, BASE_MS + i, num(i as f64 * 0.5)))
        .collect();
    assert_eq!(points(run, "jsonl/x"), expected, "after {kills} kills");
    let expected: Vec<Point> = (0..POINTS)
        .map(|i| (i, BASE_MS + i * 10, num(i as f64 * 0.5)))
        .collect();
    assert_eq!(points(run, "train/loss"), expected, "after {kills} kills");
    assert_eq!(run["status"], "FAILED", "exit code 1 means the job failed");
    assert!(run["end_time"].as_i64().unwrap() > 0);
}

fn settings(server: &MlflowServer, state_dir: &std::path::Path, worker: &str) -> MlflowSettings {
    MlflowSettings::from_env(
        MlflowUrl::parse(&server.uri()).unwrap(),
        state_dir.to_path_buf(),
        worker.into(),
        |_| None,
    )
    .unwrap()
}

fn metric(key: &str, step: i64, value: f64) -> Item {
    Item::Metric(Metric {
        key: key.into(),
        value,
        step,
        timestamp_ms: BASE_MS + step,
        worker: "worker-0".into(),
    })
}

fn param(key: &str, value: &str) -> Item {
    Item::Param(Param {
        key: key.into(),
        value: value.into(),
        worker: "worker-0".into(),
    })
}

/// The sink against the real server: a batch delivered twice (the queue's redelivery after a
/// crash) stores every point once; batches over MLflow's limits are split; a param's changed
/// value does not stop delivery and the first value stays; the run is found again without the
/// state file (a crash between `runs/create` and remembering it); `MLFLOW_RUN_ID` attaches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sink_is_idempotent_and_within_mlflows_limits_on_the_real_server() {
    let server = tokio::task::spawn_blocking(MlflowServer::start)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let identity = JobIdentity {
        experiment: "exp-sink".into(),
        worker: "worker-0".into(),
    };
    let mut batch = vec![
        Item::Status {
            status: RunStatus::Running,
            at_ms: BASE_MS,
        },
        param("lr", "0.1"),
        Item::Tag(Tag {
            key: "big".into(),
            value: "x".repeat(20_000),
        }),
        metric("odd key@gpu#0", 0, 1.0),
        metric("nan", 0, f64::NAN),
    ];
    batch.extend((0..2500).map(|i| metric("loss", i, i as f64 * 0.5)));
    let mut sink = MlflowSink::open(settings(&server, &dir.path().join("a"), "worker-0")).unwrap();
    sink.write(&identity.experiment, &batch).await.unwrap();
    // The same batch again, as after a crash before the queue recorded it delivered.
    sink.write(&identity.experiment, &batch).await.unwrap();
    let first_run = sink.run_id(&identity.experiment).await.unwrap();

    // A new sidecar whose state folder was lost: the run is found by its tags, and a changed
    // param neither fails the write nor replaces the first value.
    let mut again = MlflowSink::open(settings(&server, &dir.path().join("b"), "worker-0")).unwrap();
    again
        .write(
            &identity.experiment,
            &[
                param("lr", "0.2"),
                param("momentum", "0.9"),
                metric("loss", 2500, 1250.0),
                Item::Status {
                    status: RunStatus::Succeeded,
                    at_ms: BASE_MS + 5000,
                },
            ],
        )
        .await
        .unwrap();
    assert_eq!(again.run_id(&identity.experiment).await.unwrap(), first_run);

    // MLFLOW_RUN_ID: another worker attaches to that run.
    let mut attach = settings(&server, &dir.path().join("c"), "worker-1");
    attach.run_id = Some(first_run.clone());
    let mut attached = MlflowSink::open(attach).unwrap();
    attached
        .write(&identity.experiment, &[metric("attached", 0, 7.0)])
        .await
        .unwrap();
    let missing = {
        let mut s = settings(&server, &dir.path().join("d"), "worker-2");
        s.run_id = Some("0123456789abcdef0123456789abcdef".into());
        MlflowSink::open(s).unwrap()
    };
    let mut missing = missing;
    let e = missing
        .write(&identity.experiment, &[metric("x", 0, 1.0)])
        .await
        .unwrap_err();
    assert!(!e.transient, "{e}");
    assert!(e.message.contains("MLFLOW_RUN_ID"), "{e}");

    let data = tokio::task::spawn_blocking(move || {
        let data = server.read("exp-sink");
        drop(server);
        data
    })
    .await
    .unwrap();
    let run = only_run(&data);
    assert_eq!(run["run_id"], first_run.as_str());
    let loss: Vec<Point> = (0..2501)
        .map(|i| (i, BASE_MS + i, num(i as f64 * 0.5)))
        .collect();
    assert_eq!(points(run, "loss"), loss);
    assert_eq!(points(run, "nan"), [(0, BASE_MS, nan())]);
    assert_eq!(points(run, "odd key_gpu_0"), [(0, BASE_MS, num(1.0))]);
    assert_eq!(points(run, "attached"), [(0, BASE_MS, num(7.0))]);
    assert_eq!(run["params"]["lr"], "0.1");
    assert_eq!(run["params"]["momentum"], "0.9");
    assert_eq!(run["tags"]["big"].as_str().unwrap().len(), 8000);
    assert_eq!(run["status"], "FINISHED");
    assert_eq!(run["end_time"], BASE_MS + 5000);
    let names: BTreeMap<String, Value> = run["tags"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.starts_with("periscope."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert_eq!(names["periscope.worker"], "worker-0");
}

/// Writes `items` until the server takes them (a just-started HTTPS server may not answer yet);
/// returns the last error when `limit` passes first.
async fn write_within(
    sink: &mut MlflowSink,
    items: &[Item],
    limit: Duration,
) -> Result<(), periscope::metrics::SinkError> {
    let deadline = Instant::now() + limit;
    loop {
        match sink.write("exp-tls", items).await {
            Err(e) if e.transient && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await
            }
            other => return other,
        }
    }
}

/// HTTPS with a private CA: refused without `MLFLOW_TRACKING_SERVER_CERT_PATH` (a transient
/// failure, so the queue keeps the items), accepted with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sink_trusts_a_private_ca_from_mlflow_tracking_server_cert_path() {
    let ca = crate::harness::tls::TestCa::new();
    let ca_cert = ca.ca_cert.clone();
    let (server, ca) = tokio::task::spawn_blocking(move || (MlflowServer::start_tls(&ca), ca))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = MlflowUrl::parse(&server.uri()).unwrap();
    let items = [metric("tls", 0, 1.0)];
    // First with the CA, so that the server is known to answer before the refusal is checked.
    let with_ca =
        MlflowSettings::from_env(url.clone(), dir.path().join("a"), "worker-0".into(), |k| {
            (k == "MLFLOW_TRACKING_SERVER_CERT_PATH").then(|| ca_cert.display().to_string())
        })
        .unwrap();
    let mut trusting = MlflowSink::open(with_ca).unwrap();
    write_within(&mut trusting, &items, Duration::from_secs(120))
        .await
        .unwrap();
    let mut untrusting =
        MlflowSink::open(settings(&server, &dir.path().join("b"), "worker-0")).unwrap();
    let e = untrusting.write("exp-tls", &items).await.unwrap_err();
    assert!(e.message.contains("certificate"), "{e}");
    assert!(
        e.transient,
        "the queue keeps the items until the CA is fixed: {e}"
    );
    let data = tokio::task::spawn_blocking(move || {
        let data = server.read("exp-tls");
        drop((server, ca));
        data
    })
    .await
    .unwrap();
    assert_eq!(points(only_run(&data), "tls"), [(0, BASE_MS, num(1.0))]);
}
