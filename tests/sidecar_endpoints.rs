//! The sidecar's two listeners: the probes (`--listen`) and the MLflow-compatible endpoint
//! (`--mlflow-listen`, loopback by default), each with header, body and idle timeouts and a
//! connection limit, so a client that floods the endpoint stalls neither the probes nor the
//! shipping loop.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::metrics::{append, log_metric, start_endpoint_run, wait_with_timeout};
use crate::harness::rawhttp::{request, wait_for_port};
use crate::harness::{free_port, periscope, run};

/// A sidecar shipping `<dir>/logs/*.log` to `<dir>/store`, with its probes on `probes` and its
/// MLflow-compatible endpoint on `mlflow`.
fn sidecar(dir: &Path, probes: u16, mlflow: u16) -> Command {
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    let mut cmd = periscope();
    cmd.arg("sidecar")
        .arg("--storage")
        .arg(format!("file://{}", dir.join("store").display()))
        .arg("--logs")
        .arg(format!("{}/logs/*.log", dir.display()))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--exit-when-file")
        .arg(dir.join("exit-code"))
        .arg("--code-dir")
        .arg(dir.join("no-code"))
        .args(["--experiment-id", "exp-e", "--worker", "worker-0"])
        .args(["--poll-interval", "0.2", "--chunk-age", "0.2"])
        .args(["--listen", &format!("127.0.0.1:{probes}")])
        .args(["--mlflow-listen", &format!("127.0.0.1:{mlflow}")])
        .env_remove("SUBMARINE_TENSORBOARD_LOG_DIR")
        .env_remove("PERISCOPE_METASTORE")
        .env_remove("SUBMARINE_TRACKING_URI")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

fn end(dir: &Path, child: Child) -> String {
    std::fs::write(dir.join("exit-code"), "0\n").unwrap();
    let out = wait_with_timeout(child, Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    stderr
}

/// How long until the server closes (or answers on) `stream`, at most `limit`; `None` if it
/// did neither.
fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<(Duration, String)> {
    let start = Instant::now();
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Some((start.elapsed(), String::from_utf8_lossy(&got).into())),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Some((start.elapsed(), String::from_utf8_lossy(&got).into()))
            }
            Err(_) => return None,
        }
    }
}

#[test]
fn the_mlflow_endpoint_and_the_probes_listen_apart() {
    let dir = tempfile::tempdir().unwrap();
    let (probes, mlflow) = (free_port(), free_port());
    let child = sidecar(dir.path(), probes, mlflow).spawn().unwrap();
    wait_for_port(mlflow, "the MLflow endpoint", Duration::from_secs(30));
    wait_for_port(probes, "the probes", Duration::from_secs(30));
    let run_id = start_endpoint_run(mlflow);
    assert_eq!(log_metric(mlflow, &run_id, "loss", 0).status, 200);
    assert_eq!(request(probes, "GET", "/healthz", &[], b"").status, 200);
    // Whoever reaches the probes (the pod IP) cannot log metrics or end the run.
    assert_eq!(log_metric(probes, &run_id, "loss", 0).status, 404);
    assert_eq!(request(mlflow, "GET", "/healthz", &[], b"").status, 404);
    end(dir.path(), child);

    // The default is the loopback, and a port of its own.
    let help = run(periscope().args(["sidecar", "--help"]));
    help.expect_code(0)
        .expect_output("[default: 127.0.0.1:5000]");
}

#[test]
fn slow_or_idle_clients_are_cut_off_by_the_endpoints_timeouts() {
    let dir = tempfile::tempdir().unwrap();
    let (probes, mlflow) = (free_port(), free_port());
    let child = sidecar(dir.path(), probes, mlflow)
        .args(["--mlflow-header-timeout", "1", "--mlflow-body-timeout", "1"])
        .args(["--mlflow-idle-timeout", "2"])
        .spawn()
        .unwrap();
    wait_for_port(mlflow, "the MLflow endpoint", Duration::from_secs(30));
    let run_id = start_endpoint_run(mlflow);
    let limit = Duration::from_secs(10);

    // A connection that never sends a request.
    let mut idle = TcpStream::connect(("127.0.0.1", mlflow)).unwrap();
    assert!(
        closed_within(&mut idle, limit).is_some(),
        "an idle connection stays open"
    );

    // Headers a byte at a time, never finished.
    let mut slow = TcpStream::connect(("127.0.0.1", mlflow)).unwrap();
    slow.write_all(b"POST /api/2.0/mlflow/runs/log-metric HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let start = Instant::now();
    let mut cut = false;
    while start.elapsed() < limit {
        if slow.write_all(b"X").is_err() {
            cut = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(cut, "headers trickling in keep the connection open");

    // A body that stops short: answered with an error, and nothing is logged from it.
    let mut stalled = TcpStream::connect(("127.0.0.1", mlflow)).unwrap();
    let body =
        format!(r#"{{"run_id":"{run_id}","key":"stalled","value":1,"timestamp":1,"step":0}}"#);
    let head = format!(
        "POST /api/2.0/mlflow/runs/log-metric HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len() + 10
    );
    stalled.write_all(head.as_bytes()).unwrap();
    stalled.write_all(body.as_bytes()).unwrap();
    let (_, answer) = closed_within(&mut stalled, limit).expect("a stalled body is cut off");
    assert!(!answer.starts_with("HTTP/1.1 200"), "{answer}");

    // The endpoint still serves well-behaved clients.
    assert_eq!(log_metric(mlflow, &run_id, "after", 0).status, 200);
    end(dir.path(), child);
    let db = dir.path().join("state/metastore.db");
    let keys = run(periscope()
        .args(["metrics", "ls", "exp-e", "--metastore"])
        .arg(format!("sqlite://{}", db.display())));
    keys.expect_code(0)
        .expect_output("after")
        .refute_output("stalled");
}

#[test]
fn a_flood_on_the_mlflow_endpoint_stalls_neither_the_probes_nor_shipping() {
    let dir = tempfile::tempdir().unwrap();
    let (probes, mlflow) = (free_port(), free_port());
    let mut cmd = sidecar(dir.path(), probes, mlflow);
    // The held sockets must outlast the checks below.
    cmd.args([
        "--mlflow-header-timeout",
        "300",
        "--mlflow-idle-timeout",
        "300",
    ]);
    // SAFETY: setrlimit is async-signal-safe; the closure only calls it.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 256,
                rlim_max: 256,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    wait_for_port(mlflow, "the MLflow endpoint", Duration::from_secs(30));
    wait_for_port(probes, "the probes", Duration::from_secs(30));
    let held: Vec<TcpStream> = (0..250)
        .map(|_| TcpStream::connect(("127.0.0.1", mlflow)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_secs(1));

    let start = Instant::now();
    assert_eq!(request(probes, "GET", "/healthz", &[], b"").status, 200);
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "/healthz stalled"
    );
    // A log file that appears now is picked up and shipped.
    append(
        &dir.path().join("logs/new.log"),
        "written during the flood\n",
    );
    let url = format!(
        "file://{}/exp-e/worker-0/logs/new.log",
        dir.path().join("store").display()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let cat = run(periscope().args(["logs", "cat", &url]));
        if cat.stdout == "written during the flood\n" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new log was not shipped: {cat:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    drop(held);
    let stderr = end(dir.path(), child);
    assert!(stderr.contains("connection limit reached"), "{stderr}");
}
