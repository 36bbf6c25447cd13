//! A metastore that refuses writes mid-run (a revoked privilege) and is mended: delivery goes on
//! retrying, says why while it lasts, and loses nothing the endpoint acknowledged.

use std::fs;
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::mariadb::{MariaDb, DATABASE, USER};
use crate::harness::metrics::{log_metric, wait_with_timeout, MetricsSetup};
use crate::harness::rawhttp::request;

/// Polls `f` until it is true; panics after `limit` with `what`.
fn wait_until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(200));
    }
}

fn rows(db: &MariaDb, key: &str) -> usize {
    db.sql(&format!(
        "SELECT COUNT(*) FROM metric WHERE id = 'exp-refused' AND `key` = '{key}'"
    ))
    .trim()
    .parse()
    .unwrap()
}

/// Ends every connection the sidecar's user holds, so its next write connects again.
fn kill_connections(db: &MariaDb) {
    let ids = db.admin(&format!(
        "SELECT id FROM information_schema.processlist WHERE user = '{USER}'"
    ));
    for id in ids.split_whitespace() {
        // A connection may close by itself between the listing and its kill.
        if let Err(e) = db.try_admin(&format!("KILL {id}")) {
            assert!(e.contains("Unknown thread id"), "KILL {id}: {e}");
        }
    }
}

#[test]
fn a_metastore_that_refuses_writes_is_retried_reported_and_loses_nothing_once_mended() {
    let db = MariaDb::start_with_submarine_tables();
    let s = MetricsSetup::new();
    let (port, probes) = (crate::harness::free_port(), crate::harness::free_port());
    let child = s
        .sidecar("exp-refused")
        .args([
            "--metastore",
            &db.url(),
            "--listen",
            &format!("127.0.0.1:{probes}"),
            "--mlflow-listen",
            &format!("127.0.0.1:{port}"),
        ])
        .args(["--drain-timeout", "120"])
        .spawn()
        .unwrap();
    let get = |path: &str| request(probes, "GET", path, &[], b"");
    wait_until(Duration::from_secs(60), "the sidecar to be ready", || {
        std::net::TcpStream::connect(("127.0.0.1", probes)).is_ok() && get("/readyz").status == 200
    });
    let run = crate::harness::metrics::start_endpoint_run(port);
    assert_eq!(log_metric(port, &run, "before", 1).status, 200);
    wait_until(Duration::from_secs(60), "the first metric", || {
        rows(&db, "before") == 1
    });

    db.admin(&format!("REVOKE INSERT ON {DATABASE}.* FROM '{USER}'@'%'"));
    kill_connections(&db);
    // Acknowledged: it is on the sidecar's disk, whatever the metastore thinks.
    assert_eq!(log_metric(port, &run, "while-refused", 2).status, 200);
    wait_until(Duration::from_secs(60), "/readyz to say why", || {
        let r = get("/readyz");
        r.status == 503 && r.body.contains("metastore") && r.body.contains("INSERT")
    });
    let metrics = get("/metrics").body;
    assert!(
        metrics.contains("periscope_metastore_failing 1"),
        "{metrics}"
    );
    // The endpoint still takes metrics meanwhile.
    assert_eq!(log_metric(port, &run, "while-refused", 3).status, 200);

    db.admin(&format!("GRANT INSERT ON {DATABASE}.* TO '{USER}'@'%'"));
    let deadline = Instant::now() + Duration::from_secs(90);
    while rows(&db, "while-refused") != 2 {
        if Instant::now() > deadline {
            fs::write(s.path("exit-code"), "0\n").unwrap();
            let out = wait_with_timeout(child, Duration::from_secs(150));
            panic!(
                "delivery did not resume: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(log_metric(port, &run, "after", 4).status, 200);
    wait_until(Duration::from_secs(60), "the metric logged after", || {
        rows(&db, "after") == 1
    });
    wait_until(Duration::from_secs(30), "/readyz to recover", || {
        get("/readyz").status == 200
    });
    assert!(get("/metrics")
        .body
        .contains("periscope_metastore_failing 0"));

    fs::write(s.path("exit-code"), "0\n").unwrap();
    let out = wait_with_timeout(child, Duration::from_secs(120));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("the metastore refuses writes") && stderr.contains("writes succeed again"),
        "the log says what was wrong and when it mended: {stderr}"
    );
    assert_eq!(rows(&db, "before"), 1, "nothing doubled");
}

/// Submarine's `metric` table keeps one point per key, worker and millisecond: points beyond that
/// cannot be stored, and the sidecar says so instead of dropping them silently.
#[test]
fn points_sharing_a_millisecond_are_kept_once_and_the_log_says_so() {
    let s = MetricsSetup::new();
    let mut lines = String::new();
    for step in 0..100 {
        lines.push_str(&format!(
            "{{\"key\":\"burst\",\"value\":{step},\"step\":{step},\"timestamp\":1700000000000}}\n"
        ));
    }
    fs::write(s.path("metrics.jsonl"), lines).unwrap();
    fs::write(s.path("exit-code"), "0\n").unwrap();
    let out = wait_with_timeout(
        s.sidecar("exp-burst").spawn().unwrap(),
        Duration::from_secs(120),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("share a millisecond") && stderr.contains("points=99"),
        "{stderr}"
    );
    let shown = crate::harness::run(
        crate::harness::periscope()
            .args(["metrics", "ls", "exp-burst", "--state-dir"])
            .arg(s.path("state")),
    );
    shown.expect_code(0);
    assert!(
        shown
            .stdout
            .lines()
            .any(|l| l.starts_with("burst ") && l.contains(" 1 ")),
        "{}",
        shown.stdout
    );
}
