//! Tracking metrics into the embedded SQLite metastore with the real binary: scalars written by
//! tensorboardX, lines of a JSONL file and calls of the real mlflow client to the ingest endpoint
//! arrive exactly once, with their step, value, timestamp and NaN/±Infinity, across `kill -9` of
//! the sidecar; `periscope metrics ls|show` prints them.

use std::collections::BTreeMap;
use std::fs;
use std::thread;
use std::time::Duration;

use serde_json::Value;

use crate::harness::metrics::{
    append, jsonl_writer, kill_while_writing, wait_with_timeout, MetricsSetup as Setup,
};
use crate::harness::{periscope, run};

/// 1.7e9 s, the writers' base wall time, in milliseconds.
const BASE_MS: i64 = 1_700_000_000_000;

/// The sidecar's experiment in these tests.
const EXPERIMENT: &str = "exp-m";

/// Runs `periscope metrics ARGS --state-dir STATE` and returns stdout; panics unless it exits 0.
fn metrics(s: &Setup, args: &[&str]) -> String {
    let ran = run(periscope()
        .arg("metrics")
        .args(args)
        .arg("--state-dir")
        .arg(s.path("state")));
    ran.expect_code(0);
    ran.stdout
}

/// Every metric row of the experiment, by key, as (step, timestamp, value text).
fn rows(s: &Setup) -> BTreeMap<String, Vec<(i64, i64, String)>> {
    let mut rows: BTreeMap<String, Vec<(i64, i64, String)>> = BTreeMap::new();
    for line in metrics(s, &["show", "exp-m", "--json"]).lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["worker"], "worker-0", "{line}");
        let value = match &v["value"] {
            Value::String(s) => s.clone(),
            n => format!("{}", n.as_f64().unwrap()),
        };
        rows.entry(v["key"].as_str().unwrap().to_string())
            .or_default()
            .push((
                v["step"].as_i64().unwrap(),
                v["timestamp"].as_i64().unwrap(),
                value,
            ));
    }
    rows
}

fn num(v: f64) -> String {
    format!("{v}")
}

/// A sidecar with its MLflow-compatible endpoint on a free port of 127.0.0.1.
fn sidecar_listening(s: &Setup) -> (std::process::Child, u16) {
    let port = crate::harness::free_port();
    let mut cmd = s.sidecar(EXPERIMENT);
    cmd.args(["--mlflow-listen", &format!("127.0.0.1:{port}")]);
    (cmd.spawn().unwrap(), port)
}

/// The main container exits 0; the sidecar drains and must exit 0 too.
fn exit_0_and_drain(s: &Setup, child: std::process::Child) {
    fs::write(s.path("exit-code"), "0\n").unwrap();
    let done = wait_with_timeout(child, Duration::from_secs(60));
    assert_eq!(
        done.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
}

#[test]
fn tensorboardx_scalars_and_jsonl_lines_arrive_once_with_nan_purge_params_and_status() {
    let s = Setup::new();
    // What `periscope localize` recorded: the code revision becomes params.
    s.record_code_revision();

    let jsonl = s.path("metrics.jsonl");
    append(
        &jsonl,
        &format!(
            "{{\"key\":\"jsonl/loss\",\"value\":0.5,\"step\":0,\"timestamp\":{}}}\n\
             {{\"key\":\"jsonl/loss\",\"value\":NaN,\"step\":1,\"timestamp\":{}}}\n\
             this line is not a metric\n",
            BASE_MS,
            BASE_MS + 1
        ),
    );
    let child = s.sidecar(EXPERIMENT).spawn().unwrap();
    crate::harness::python::run_script(
        "metrics_write_tbx.py",
        ["basic".as_ref(), s.path("tb").as_os_str()],
    );
    // A line written in two pieces is read once, whole.
    append(&jsonl, "{\"key\":\"jsonl/loss\",\"value\":\"Infin");
    thread::sleep(Duration::from_millis(300));
    append(
        &jsonl,
        &format!("ity\",\"step\":2,\"timestamp\":{}}}\n", BASE_MS + 2),
    );
    fs::write(s.path("exit-code"), "0\n").unwrap();
    let out = wait_with_timeout(child, Duration::from_secs(120));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("line=3"),
        "the bad line is reported: {stderr}"
    );

    let rows = rows(&s);
    // train/loss: steps 0..19 of the first writer (20..29 were purged by the restart at step 20),
    // then 20..24 of the restarted writer.
    let mut loss: Vec<(i64, i64, String)> = (0..20)
        .map(|step| {
            let v = match step {
                5 => "NaN".to_string(),
                6 => "Infinity".to_string(),
                7 => "-Infinity".to_string(),
                _ => num(step as f64 * 0.25),
            };
            (step, BASE_MS + step * 10, v)
        })
        .collect();
    loss.extend(
        (20..25).map(|step| (step, BASE_MS + 10_000 + step * 10, num(100.0 + step as f64))),
    );
    assert_eq!(rows["train/loss"], loss);
    let acc: Vec<_> = (0..5)
        .map(|step| (step, BASE_MS + step * 10, num(step as f64 / 8.0)))
        .collect();
    assert_eq!(rows["eval/acc"], acc);
    assert_eq!(
        rows["jsonl/loss"],
        [
            (0, BASE_MS, num(0.5)),
            (1, BASE_MS + 1, "NaN".to_string()),
            (2, BASE_MS + 2, "Infinity".to_string())
        ]
    );
    assert_eq!(rows.len(), 3, "{rows:?}");

    // The table views.
    let experiments = metrics(&s, &["ls"]);
    let line = experiments
        .lines()
        .find(|l| l.starts_with("exp-m"))
        .unwrap();
    assert!(
        line.contains("Succeeded") && line.ends_with(" 33"),
        "{experiments}"
    );
    let series = metrics(&s, &["ls", "exp-m"]);
    let cols = |l: &str| l.split_whitespace().map(String::from).collect::<Vec<_>>();
    let loss_line = series
        .lines()
        .find(|l| l.starts_with("train/loss"))
        .unwrap();
    assert_eq!(cols(loss_line), ["train/loss", "worker-0", "25", "0", "24"]);
    let shown = metrics(&s, &["show", "exp-m", "--key", "train/loss"]);
    let step5 = shown
        .lines()
        .find(|l| cols(l).get(2).map(String::as_str) == Some("5"))
        .unwrap();
    assert_eq!(
        cols(step5),
        [
            "train/loss",
            "worker-0",
            "5",
            "2023-11-14T22:13:20.050Z",
            "NaN"
        ]
    );
    let params = metrics(&s, &["show", "exp-m", "--params"]);
    assert!(
        params.lines().any(|l| cols(l)
            == [
                "code.training-job.revision",
                "worker-0",
                "0123456789abcdef0123456789abcdef01234567"
            ]),
        "{params}"
    );
    // The status from JSON too.
    let exp: Value =
        serde_json::from_str(metrics(&s, &["ls", "--json"]).lines().next().unwrap()).unwrap();
    assert_eq!(exp["status"], "Succeeded");
    assert!(exp["finished_time"].is_string());
}

#[test]
fn kill_9_and_restart_mid_stream_loses_and_doubles_nothing() {
    let s = Setup::new();
    let jsonl = s.path("metrics.jsonl");
    const LINES: i64 = 1500;
    const POINTS: i64 = 600;
    let writer = jsonl_writer(&jsonl, LINES, Duration::from_millis(15), 10);
    let kills = kill_while_writing(
        || s.sidecar(EXPERIMENT),
        &s.path("tb"),
        POINTS,
        150..600,
        writer,
        || {
            let shown = run(periscope()
                .args(["metrics", "show", EXPERIMENT, "--json", "--state-dir"])
                .arg(s.path("state")));
            shown.code == Some(0) && !shown.stdout.is_empty()
        },
    );
    fs::write(s.path("exit-code"), "1\n").unwrap();
    let out = wait_with_timeout(
        s.sidecar(EXPERIMENT).spawn().unwrap(),
        Duration::from_secs(120),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let rows = rows(&s);
    let expected: Vec<_> = (0..LINES)
        .map(|i| (i, BASE_MS + i, num(i as f64 * 0.5)))
        .collect();
    assert_eq!(rows["jsonl/x"].len(), expected.len(), "after {kills} kills");
    assert_eq!(rows["jsonl/x"], expected);
    let expected: Vec<_> = (0..POINTS)
        .map(|i| (i, BASE_MS + i * 10, num(i as f64 * 0.5)))
        .collect();
    assert_eq!(rows["train/loss"], expected, "after {kills} kills");
    let exp: Value =
        serde_json::from_str(metrics(&s, &["ls", "--json"]).lines().next().unwrap()).unwrap();
    assert_eq!(exp["status"], "Failed", "exit code 1 means the job failed");
}

#[test]
fn metrics_commands_report_a_missing_metastore_or_experiment() {
    let dir = tempfile::tempdir().unwrap();
    let ran = run(periscope()
        .args(["metrics", "ls", "--state-dir"])
        .arg(dir.path()));
    ran.expect_code(3).expect_output("no metastore");
    let ran = run(periscope().args([
        "metrics",
        "show",
        "nope",
        "--metastore",
        "mysql://u:hunter2@127.0.0.1/x",
    ]));
    ran.expect_code(2).refute_output("hunter2");
}

#[test]
fn the_mlflow_rest_endpoint_stores_metrics_and_params_and_refuses_an_oversized_batch() {
    let s = Setup::new();
    let (child, port) = sidecar_listening(&s);
    let out = crate::harness::python::run_script(
        "metrics_mlflow_rest.py",
        [format!("http://127.0.0.1:{port}")],
    );
    let calls: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let status = |path: &str| -> Vec<i64> {
        calls
            .iter()
            .filter(|c| c["call"] == path)
            .map(|c| c["status"].as_i64().unwrap())
            .collect()
    };
    assert_eq!(status("runs/log-metric"), [200]);
    assert_eq!(status("runs/log-batch"), [200, 400], "{out}");
    let refused = calls
        .iter()
        .filter(|c| c["call"] == "runs/log-batch")
        .nth(1)
        .unwrap();
    assert_eq!(refused["body"]["error_code"], "INVALID_PARAMETER_VALUE");
    let created = calls.iter().find(|c| c["call"] == "runs/create").unwrap();
    assert_eq!(created["body"]["run"]["info"]["status"], "RUNNING");
    exit_0_and_drain(&s, child);

    let rows = rows(&s);
    assert_eq!(rows["m/single"], [(0, BASE_MS, "NaN".to_string())]);
    assert_eq!(rows["m/inf"], [(1, BASE_MS, "Infinity".to_string())]);
    let batch: Vec<_> = (0..990)
        .map(|i| (i, BASE_MS + i, num(i as f64 * 0.5)))
        .collect();
    assert_eq!(rows["m/batch"], batch);
    assert!(
        !rows.contains_key("too/many"),
        "a refused batch stores nothing"
    );
    let params = metrics(&s, &["show", "exp-m", "--params", "--json"]);
    for key in ["\"lr\"", "\"batch_size\""] {
        assert!(params.contains(key), "{params}");
    }
}

#[test]
fn the_real_mlflow_client_logs_through_the_endpoint_unchanged() {
    let s = Setup::new();
    let (child, port) = sidecar_listening(&s);
    crate::harness::metrics::run_mlflow_client(port);
    exit_0_and_drain(&s, child);

    let rows = rows(&s);
    assert_eq!(rows["client/nan"], [(0, BASE_MS, "NaN".to_string())]);
    assert_eq!(rows["client/inf"], [(1, BASE_MS, "Infinity".to_string())]);
    let loss: Vec<_> = (0..2500)
        .map(|i| (i, BASE_MS + i, num(i as f64 * 0.25)))
        .collect();
    assert_eq!(rows["client/loss"], loss);
    let params = metrics(&s, &["show", "exp-m", "--params"]);
    assert!(
        params
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["lr", "worker-0", "0.01"]),
        "{params}"
    );
    // `end_run` sent FINISHED; the exit code (0) decides.
    let exp: Value =
        serde_json::from_str(metrics(&s, &["ls", "--json"]).lines().next().unwrap()).unwrap();
    assert_eq!(exp["status"], "Succeeded");
}

#[test]
fn a_run_the_script_ends_failed_stays_failed_when_the_main_container_exits_0() {
    let s = Setup::new();
    let (child, port) = sidecar_listening(&s);
    crate::harness::metrics::run_mlflow_client_ending(port, Some("FAILED"));
    exit_0_and_drain(&s, child);
    let exp: Value =
        serde_json::from_str(metrics(&s, &["ls", "--json"]).lines().next().unwrap()).unwrap();
    assert_eq!(exp["status"], "Failed", "{exp}");
    assert!(exp["finished_time"].is_string(), "{exp}");
    // Everything the script logged before it gave up is there.
    assert_eq!(rows(&s)["client/loss"].len(), 2500);
}
