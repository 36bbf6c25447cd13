//! Tracking metrics into Submarine's MySQL metastore, with the real binary and a real MariaDB on
//! 127.0.0.1 holding Submarine's tables: scalars written by tensorboardX, calls of the real mlflow
//! client to the ingest endpoint and lines of a JSONL file arrive exactly once with their step,
//! value, timestamp and NaN handling, across a 20-second outage of the database and `kill -9` of
//! the sidecar; wrong credentials and missing tables stop the sidecar with their exit code; TLS in
//! MySQL's modes; MariaDB's ed25519 authentication; values stored byte for byte, and never taken
//! for SQL, on a server that forces another character set on every session; a worker that
//! failed fails the experiment although another succeeds after it; metrics are stored while
//! another session holds the experiment row (as every other worker's inserts do), after an
//! outage too, and after the experiment was deleted.
//! Rows are read back with the `mariadb` command-line client.

use std::collections::BTreeMap;
use std::fs;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use periscope::metrics::submarine::parse_datetime;

use crate::harness::mariadb::{MariaDb, PASSWORD, USER};
use crate::harness::metrics::{
    append, jsonl_writer, kill_while_writing, wait_with_timeout, MetricsSetup as Setup, COMMIT,
};
use crate::harness::rawhttp::{request, wait_for_port};
use crate::harness::tls::TestCa;
use crate::harness::{free_port, periscope, run};

/// 1.7e9 s, the writers' base wall time, in milliseconds.
const BASE_MS: i64 = 1_700_000_000_000;
const EXPERIMENT: &str = "exp-my";

/// The sidecar writing to `db` through `--metastore`.
fn sidecar_to(s: &Setup, db: &MariaDb) -> Command {
    let mut cmd = s.sidecar(EXPERIMENT);
    cmd.arg("--metastore").arg(db.url());
    cmd
}

/// A metric row as read back: step, timestamp (ms), value (as `FLOAT` holds it), is_nan.
type Row = (i64, i64, f32, bool);

/// Every metric row of the experiment by key, ordered by step and timestamp, with the worker
/// checked.
fn rows(db: &MariaDb) -> BTreeMap<String, Vec<Row>> {
    let text = db.sql(&format!(
        "SELECT `key`, worker_index, step, `timestamp`, CAST(value AS DOUBLE), is_nan FROM metric \
         WHERE id = '{EXPERIMENT}' ORDER BY `key`, step, `timestamp`"
    ));
    let mut rows: BTreeMap<String, Vec<Row>> = BTreeMap::new();
    for line in text.lines() {
        let c: Vec<&str> = line.split('\t').collect();
        assert_eq!(c[1], "worker-0", "{line}");
        let ts = parse_datetime(c[3]).unwrap_or_else(|| panic!("timestamp in {line}"));
        let value: f64 = c[4].parse().unwrap_or_else(|_| panic!("value in {line}"));
        rows.entry(c[0].to_string()).or_default().push((
            c[2].parse().unwrap(),
            ts,
            value as f32,
            c[5] == "1",
        ));
    }
    rows
}

/// How many metric rows the experiment has.
fn count(db: &MariaDb) -> usize {
    db.sql(&format!(
        "SELECT COUNT(*) FROM metric WHERE id = '{EXPERIMENT}'"
    ))
    .trim()
    .parse()
    .unwrap()
}

/// The experiment row: status, running_time, finished_time, experiment_spec, update_time.
fn experiment(db: &MariaDb) -> Vec<String> {
    db.sql(&format!(
        "SELECT experiment_status, running_time, finished_time, experiment_spec, update_time \
         FROM experiment WHERE id = '{EXPERIMENT}'"
    ))
    .trim_end()
    .split('\t')
    .map(String::from)
    .collect()
}

#[track_caller]
fn expect_exit(out: &std::process::Output, code: i32) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "{stderr}");
    stderr
}

/// Polls `f` until it is true; panics after `limit` with `what`.
fn wait_until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(200));
    }
}

/// The largest `FLOAT`: what ±Infinity is stored as.
const FLOAT_MAX: f32 = f32::MAX;

fn jsonl_line(key: &str, value: &str, step: i64, ts: i64) -> String {
    format!("{{\"key\":\"{key}\",\"value\":{value},\"step\":{step},\"timestamp\":{ts}}}\n")
}

#[test]
fn tensorboardx_mlflow_client_and_jsonl_metrics_arrive_once_with_params_and_status() {
    let db = MariaDb::start_with_submarine_tables();
    let s = Setup::new();
    // What `periscope localize` recorded: the code revision becomes params.
    s.record_code_revision();
    let jsonl = s.path("metrics.jsonl");
    append(&jsonl, &jsonl_line("jsonl/loss", "0.5", 0, BASE_MS));
    append(&jsonl, &jsonl_line("jsonl/loss", "NaN", 1, BASE_MS + 1));
    append(&jsonl, &jsonl_line("jsonl/loss", "-0.75", 2, BASE_MS + 2));

    let port = crate::harness::free_port();
    let mut cmd = sidecar_to(&s, &db);
    cmd.args(["--mlflow-listen", &format!("127.0.0.1:{port}")]);
    let child = cmd.spawn().unwrap();
    crate::harness::python::run_script(
        "metrics_write_tbx.py",
        ["basic".as_ref(), s.path("tb").as_os_str()],
    );
    crate::harness::metrics::run_mlflow_client(port);
    // While the sidecar runs, the experiment row it created says Running.
    wait_until(Duration::from_secs(60), "status Running", || {
        experiment(&db).first().map(String::as_str) == Some("Running")
    });
    fs::write(s.path("exit-code"), "0\n").unwrap();
    let out = wait_with_timeout(child, Duration::from_secs(120));
    let stderr = expect_exit(&out, 0);
    assert!(!stderr.contains(PASSWORD), "{stderr}");

    let rows = rows(&db);
    // tf.events: train/loss 0..19 of the first writer (20..29 purged by the restart at step 20),
    // then 20..24 of the restarted writer; NaN as 0 with is_nan, ±Infinity as FLOAT's largest.
    let mut loss: Vec<Row> = (0..20)
        .map(|step| {
            let (v, nan) = match step {
                5 => (0.0, true),
                6 => (FLOAT_MAX, false),
                7 => (-FLOAT_MAX, false),
                _ => (step as f32 * 0.25, false),
            };
            (step, BASE_MS + step * 10, v, nan)
        })
        .collect();
    loss.extend((20..25).map(|step| {
        (
            step,
            BASE_MS + 10_000 + step * 10,
            100.0 + step as f32,
            false,
        )
    }));
    assert_eq!(rows["train/loss"], loss);
    let acc: Vec<Row> = (0..5)
        .map(|step| (step, BASE_MS + step * 10, step as f32 / 8.0, false))
        .collect();
    assert_eq!(rows["eval/acc"], acc);
    // JSONL.
    assert_eq!(
        rows["jsonl/loss"],
        [
            (0, BASE_MS, 0.5, false),
            (1, BASE_MS + 1, 0.0, true),
            (2, BASE_MS + 2, -0.75, false)
        ]
    );
    // The mlflow client.
    assert_eq!(rows["client/nan"], [(0, BASE_MS, 0.0, true)]);
    assert_eq!(rows["client/inf"], [(1, BASE_MS, FLOAT_MAX, false)]);
    let client_loss: Vec<Row> = (0..2500)
        .map(|i| (i, BASE_MS + i, i as f32 * 0.25, false))
        .collect();
    assert_eq!(rows["client/loss"], client_loss);
    assert_eq!(rows.len(), 6, "{:?}", rows.keys().collect::<Vec<_>>());

    // Params: the code revision and the client's, in Submarine's param table.
    let params = db.sql(&format!(
        "SELECT `key`, value, worker_index FROM param WHERE id = '{EXPERIMENT}' ORDER BY `key`"
    ));
    let revision = format!("code.training-job.revision\t{COMMIT}\tworker-0");
    for expected in [
        revision.as_str(),
        "code.training-job.revision_kind\tcommit\tworker-0",
        "lr\t0.01\tworker-0",
    ] {
        assert!(
            params.lines().any(|l| l == expected),
            "{expected} in\n{params}"
        );
    }
    // Standalone status: the row Periscope created, Succeeded with both times.
    let e = experiment(&db);
    assert_eq!(e[0], "Succeeded", "{e:?}");
    let running = parse_datetime(&e[1]).expect("running_time");
    let finished = parse_datetime(&e[2]).expect("finished_time");
    assert!(running <= finished, "{e:?}");
    // The final status is the experiment's last update (Submarine's `update_time` column keeps
    // whole seconds).
    let updated = parse_datetime(&e[4]).expect("update_time");
    assert!((updated - finished).abs() < 1000, "update_time: {e:?}");
}

#[test]
fn submarine_tracking_uri_and_a_20_second_outage_lose_and_double_nothing() {
    let mut db = MariaDb::start_with_submarine_tables();
    // Submarine created the experiment: its columns stay as they are, beyond status and times.
    db.sql(&format!(
        "INSERT INTO experiment (id, experiment_spec, create_by, experiment_status, accepted_time) \
         VALUES ('{EXPERIMENT}', '{{\"meta\":{{\"name\":\"mnist\"}}}}', 'alice', 'Accepted', \
         '2026-01-01 00:00:00.000')"
    ));
    let s = Setup::new();
    let jsonl = s.path("metrics.jsonl");
    const LINES: i64 = 600;
    let mut cmd = s.sidecar(EXPERIMENT);
    cmd.env(
        "SUBMARINE_TRACKING_URI",
        db.url_with("mysql+pymysql", PASSWORD),
    );
    let child = cmd.spawn().unwrap();
    let write = |range: std::ops::Range<i64>| {
        for i in range {
            append(
                &jsonl,
                &jsonl_line("out/x", &format!("{}", i as f64 * 0.5), i, BASE_MS + i),
            );
            if i % 20 == 0 {
                thread::sleep(Duration::from_millis(20));
            }
        }
    };
    write(0..200);
    wait_until(Duration::from_secs(60), "the first lines", || {
        count(&db) > 0
    });
    db.stop();
    // Written while the database is down: queued by the sidecar.
    let down = Instant::now();
    write(200..400);
    thread::sleep(Duration::from_secs(20).saturating_sub(down.elapsed()));
    db.start();
    write(400..LINES);
    wait_until(
        Duration::from_secs(120),
        "every line after the outage",
        || count(&db) >= LINES as usize,
    );
    fs::write(s.path("exit-code"), "0\n").unwrap();
    let out = wait_with_timeout(child, Duration::from_secs(120));
    let stderr = expect_exit(&out, 0);
    assert!(
        stderr.contains("metastore write failed"),
        "the outage was noticed: {stderr}"
    );
    assert!(!stderr.contains(PASSWORD), "{stderr}");

    let expected: Vec<Row> = (0..LINES)
        .map(|i| (i, BASE_MS + i, i as f32 * 0.5, false))
        .collect();
    assert_eq!(rows(&db)["out/x"], expected);
    let e = experiment(&db);
    assert_eq!(e[0], "Succeeded", "{e:?}");
    assert!(parse_datetime(&e[2]).is_some(), "{e:?}");
    assert_eq!(
        e[3], "{\"meta\":{\"name\":\"mnist\"}}",
        "Submarine's spec kept"
    );
    let owner = db.sql(&format!(
        "SELECT create_by, accepted_time FROM experiment WHERE id = '{EXPERIMENT}'"
    ));
    assert_eq!(owner.trim_end(), "alice\t2026-01-01 00:00:00.000");
}

#[test]
fn kill_9_and_restart_mid_stream_loses_and_doubles_nothing() {
    let db = MariaDb::start_with_submarine_tables();
    let s = Setup::new();
    let jsonl = s.path("metrics.jsonl");
    const LINES: i64 = 1500;
    const POINTS: i64 = 600;
    let writer = jsonl_writer(&jsonl, LINES, Duration::from_millis(15), 10);
    let kills = kill_while_writing(
        || sidecar_to(&s, &db),
        &s.path("tb"),
        POINTS,
        300..900,
        writer,
        || count(&db) > 0,
    );
    fs::write(s.path("exit-code"), "1\n").unwrap();
    let out = wait_with_timeout(
        sidecar_to(&s, &db).spawn().unwrap(),
        Duration::from_secs(120),
    );
    expect_exit(&out, 0);

    let rows = rows(&db);
    let expected: Vec<Row> = (0..LINES)
        .map(|i| (i, BASE_MS + i, i as f32 * 0.5, false))
        .collect();
    assert_eq!(rows["jsonl/x"].len(), expected.len(), "after {kills} kills");
    assert_eq!(rows["jsonl/x"], expected);
    let expected: Vec<Row> = (0..POINTS)
        .map(|i| (i, BASE_MS + i * 10, i as f32 * 0.5, false))
        .collect();
    assert_eq!(rows["train/loss"], expected, "after {kills} kills");
    assert_eq!(
        experiment(&db)[0],
        "Failed",
        "exit code 1 means the job failed"
    );
}

#[test]
fn a_worker_that_fails_first_keeps_the_experiment_failed_when_another_succeeds_after() {
    let db = MariaDb::start_with_submarine_tables();
    let workers = [Setup::new(), Setup::new()];
    let sidecars: Vec<_> = workers
        .iter()
        .enumerate()
        .map(|(i, s)| {
            s.record_code_revision();
            let mut cmd = s.sidecar_as(EXPERIMENT, &format!("worker-{i}"));
            cmd.arg("--metastore").arg(db.url());
            cmd.spawn().unwrap()
        })
        .collect();
    // Both started: each one's code params, queued after its Running, are stored.
    wait_until(Duration::from_secs(60), "both workers' start", || {
        db.sql(&format!(
            "SELECT COUNT(DISTINCT worker_index) FROM param WHERE id = '{EXPERIMENT}'"
        ))
        .trim()
            == "2"
    });
    assert_eq!(experiment(&db)[0], "Running");
    let [worker0, worker1]: [_; 2] = sidecars.try_into().unwrap();

    // Worker 1's training exits 3: its sidecar stores Failed before it ends.
    fs::write(workers[1].path("exit-code"), "3\n").unwrap();
    expect_exit(&wait_with_timeout(worker1, Duration::from_secs(120)), 0);
    let failed = experiment(&db);
    assert_eq!(failed[0], "Failed", "{failed:?}");
    assert!(parse_datetime(&failed[2]).is_some(), "{failed:?}");

    // Worker 0's training then exits 0: the experiment stays Failed, from worker 1's end.
    fs::write(workers[0].path("exit-code"), "0\n").unwrap();
    expect_exit(&wait_with_timeout(worker0, Duration::from_secs(120)), 0);
    assert_eq!(experiment(&db), failed);
}

#[test]
fn wrong_password_unknown_database_and_missing_tables_stop_the_sidecar_with_their_exit_code() {
    let db = MariaDb::start_with_submarine_tables();
    let s = Setup::new();
    let mut cmd = s.sidecar(EXPERIMENT);
    cmd.arg("--metastore")
        .arg(db.url_with("mysql", "hunter2-wrong"));
    let out = wait_with_timeout(cmd.spawn().unwrap(), Duration::from_secs(60));
    let stderr = expect_exit(&out, 4);
    assert!(stderr.contains("Access denied"), "{stderr}");
    assert!(stderr.contains("check the user and password"), "{stderr}");
    assert!(!stderr.contains("hunter2-wrong"), "{stderr}");

    // A database that does not exist (the user may use it once it does).
    db.admin("GRANT ALL ON nosuchdb.* TO 'submarine'@'%';");
    let url = format!("mysql://{USER}:{PASSWORD}@127.0.0.1:{}/nosuchdb", db.port);
    let stderr = expect_exit(&one_point_to(&url, "x"), 3);
    assert!(stderr.contains("create the database"), "{stderr}");
    assert!(!stderr.contains(PASSWORD), "{stderr}");

    // A database without Submarine's tables.
    db.admin("CREATE DATABASE bare; GRANT ALL ON bare.* TO 'submarine'@'%';");
    let url = format!("mysql://{USER}:{PASSWORD}@127.0.0.1:{}/bare", db.port);
    let s = Setup::new();
    let mut cmd = s.sidecar(EXPERIMENT);
    cmd.arg("--metastore").arg(&url);
    let out = wait_with_timeout(cmd.spawn().unwrap(), Duration::from_secs(60));
    let stderr = expect_exit(&out, 3);
    assert!(stderr.contains("create Submarine's tables"), "{stderr}");
    assert!(!stderr.contains(PASSWORD), "{stderr}");

    // `periscope metrics` reads SQLite only, and says so without the password.
    let ran = run(periscope()
        .args(["metrics", "ls", "--metastore"])
        .arg(db.url()));
    ran.expect_code(2).refute_output(PASSWORD);
}

/// A sidecar run of a job that has ended, with one JSONL point of `key` (value 0.5, step 0) and
/// `--metastore url`.
fn one_point_to(url: &str, key: &str) -> std::process::Output {
    let s = Setup::new();
    append(
        &s.path("metrics.jsonl"),
        &jsonl_line(key, "0.5", 0, BASE_MS),
    );
    fs::write(s.path("exit-code"), "0\n").unwrap();
    let mut cmd = s.sidecar(EXPERIMENT);
    cmd.arg("--metastore").arg(url);
    wait_with_timeout(cmd.spawn().unwrap(), Duration::from_secs(60))
}

#[test]
fn tls_checks_the_servers_certificate_and_serves_a_user_who_requires_it() {
    let ca = TestCa::new();
    let db = MariaDb::start_with_submarine_tables_and_tls(&ca);
    // The server refuses this user anything but TLS.
    db.admin(&format!("ALTER USER '{USER}'@'%' REQUIRE SSL;"));
    // The same server by a name its certificate does not hold: 127.0.0.1 as an IPv4-mapped IPv6
    // address.
    let other_name = db.url().replace("@127.0.0.1:", "@[::ffff:127.0.0.1]:");
    let sidecar_to_url = |url: String| one_point_to(&url, "tls/loss");
    let sidecar = |options: &str| sidecar_to_url(format!("{}?{options}", db.url()));

    // The CA checked and the name (127.0.0.1) in the certificate checked: the row arrives.
    let ca_path = ca.ca_cert.display().to_string();
    let out = sidecar(&format!("ssl-mode=VERIFY_IDENTITY&ssl-ca={ca_path}"));
    let stderr = expect_exit(&out, 0);
    assert!(!stderr.contains(PASSWORD), "{stderr}");
    assert_eq!(rows(&db)["tls/loss"], [(0, BASE_MS, 0.5, false)]);

    // VERIFY_CA: the chain is checked, the name is not.
    expect_exit(&sidecar(&format!("ssl-mode=VERIFY_CA&ssl-ca={ca_path}")), 0);
    expect_exit(
        &sidecar_to_url(format!("{other_name}?ssl-mode=VERIFY_CA&ssl-ca={ca_path}")),
        0,
    );
    // VERIFY_IDENTITY refuses a certificate that does not name the host in the URL.
    let stderr = expect_exit(
        &sidecar_to_url(format!(
            "{other_name}?ssl-mode=VERIFY_IDENTITY&ssl-ca={ca_path}"
        )),
        4,
    );
    assert!(stderr.contains("not valid for name"), "{stderr}");

    // MySQL's default, PREFERRED: encrypted, certificate unchecked, so the user is served.
    expect_exit(&sidecar(""), 0);

    // Without TLS the server refuses the user.
    let stderr = expect_exit(&sidecar("ssl-mode=DISABLED"), 4);
    assert!(stderr.contains("Access denied"), "{stderr}");

    // A CA that did not sign the server's certificate: refused before any password is sent.
    let other = TestCa::new();
    let stderr = expect_exit(
        &sidecar(&format!(
            "ssl-mode=VERIFY_CA&ssl-ca={}",
            other.ca_cert.display()
        )),
        4,
    );
    assert!(stderr.contains("TLS with the server failed"), "{stderr}");
    assert!(stderr.contains("check that ssl-ca is the CA"), "{stderr}");
    assert!(!stderr.contains(PASSWORD), "{stderr}");
}

#[test]
fn a_server_without_tls_is_refused_when_the_url_requires_it() {
    let db = MariaDb::start_with_submarine_tables();
    let s = Setup::new();
    fs::write(s.path("exit-code"), "0\n").unwrap();
    let mut cmd = s.sidecar(EXPERIMENT);
    cmd.arg("--metastore")
        .arg(format!("{}?ssl-mode=REQUIRED", db.url()));
    let out = wait_with_timeout(cmd.spawn().unwrap(), Duration::from_secs(60));
    let stderr = expect_exit(&out, 4);
    assert!(
        stderr.contains("ssl-mode REQUIRED needs TLS, and the server does not offer it"),
        "{stderr}"
    );
}

#[test]
fn a_mariadb_user_with_ed25519_authentication_is_served() {
    let db = MariaDb::start_with_submarine_tables();
    db.admin(
        "INSTALL SONAME 'auth_ed25519'; \
         CREATE USER 'ed'@'%' IDENTIFIED VIA ed25519 USING PASSWORD('ed-s3cret'); \
         GRANT ALL ON submarine.* TO 'ed'@'%';",
    );
    let url = format!("mysql://ed:ed-s3cret@127.0.0.1:{}/submarine", db.port);
    let stderr = expect_exit(&one_point_to(&url, "ed/loss"), 0);
    assert!(!stderr.contains("ed-s3cret"), "{stderr}");
    assert_eq!(rows(&db)["ed/loss"], [(0, BASE_MS, 0.5, false)]);
}

/// `text`'s bytes in hex, as SQL writes a binary literal (`0x…`) and `HEX()` answers (upper case).
fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02X}")).collect()
}

#[test]
fn a_value_is_stored_byte_for_byte_and_never_run_as_sql_whatever_the_servers_charset() {
    // Every session is gbk, whatever the client's handshake asks for. In gbk the byte after `€`'s
    // first two (0xAC) and a backslash (0x5C) make one character: a value escaped into the SQL
    // text would end its string at the quote that follows and run the rest as SQL.
    let db = MariaDb::start_with_submarine_tables_and_server_args(&[
        "--character-set-server=gbk",
        "--skip-character-set-client-handshake",
    ]);
    db.sql(
        "INSERT INTO experiment (id, experiment_spec) VALUES ('victim', '{}'); \
         INSERT INTO param (id, `key`, value, worker_index) VALUES ('victim', 'lr', '0.1', \
         'worker-0');",
    );
    // Closes the value, then adds a row that overwrites the other experiment's param.
    let payload = format!(
        "a€',0x77),(0x{},0x{},0,0x{})ON DUPLICATE KEY UPDATE value=CONCAT(0x70776e6564,USER())#",
        hex("victim"),
        hex("lr"),
        hex("worker-0")
    );
    let s = Setup::new();
    let port = free_port();
    let mut cmd = sidecar_to(&s, &db);
    cmd.args(["--mlflow-listen", &format!("127.0.0.1:{port}")]);
    let child = cmd.spawn().unwrap();
    wait_for_port(port, "the sidecar's endpoint", Duration::from_secs(30));
    let run = crate::harness::metrics::start_endpoint_run(port);
    let body = serde_json::json!({"run_id": run, "key": "lr", "value": payload}).to_string();
    let reply = request(
        port,
        "POST",
        "/api/2.0/mlflow/runs/log-parameter",
        &[("Content-Type", "application/json".into())],
        body.as_bytes(),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    fs::write(s.path("exit-code"), "0\n").unwrap();
    expect_exit(&wait_with_timeout(child, Duration::from_secs(120)), 0);

    assert_eq!(
        db.sql("SELECT value FROM param WHERE id = 'victim'"),
        "0.1\n",
        "the other experiment's param is unchanged"
    );
    let stored = db.sql(&format!(
        "SELECT HEX(value) FROM param WHERE id = '{EXPERIMENT}' AND `key` = 'lr'"
    ));
    assert_eq!(stored.trim_end(), hex(&payload), "the value, byte for byte");
}

/// A fleet of sidecars shares one server's `max_connections` (151 by default): a sidecar with
/// nothing to write holds no connection, and writes again when metrics come.
#[test]
fn an_idle_sidecar_holds_no_connection_and_writes_again_when_metrics_come() {
    let db = MariaDb::start_with_submarine_tables();
    let s = Setup::new();
    let jsonl = s.path("metrics.jsonl");
    let connections = || -> usize {
        db.sql(&format!(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = '{USER}' \
             AND ID <> CONNECTION_ID()"
        ))
        .trim()
        .parse()
        .unwrap()
    };
    let child = sidecar_to(&s, &db).spawn().unwrap();
    append(&jsonl, &jsonl_line("loss", "1.5", 1, BASE_MS));
    wait_until(Duration::from_secs(60), "the first point", || {
        count(&db) == 1
    });
    let closed = Instant::now() + Duration::from_secs(10);
    while connections() > 0 {
        assert!(
            Instant::now() < closed,
            "the idle sidecar keeps its connections: {}",
            db.sql(&format!(
                "SELECT ID, COMMAND, TIME, STATE, INFO FROM information_schema.PROCESSLIST \
                 WHERE USER = '{USER}' AND ID <> CONNECTION_ID()"
            ))
        );
        thread::sleep(Duration::from_millis(200));
    }
    // The server has no TLS, and the URL asks for none (ssl-mode PREFERRED): having learnt so at
    // the first connection, the sidecar connects again without asking, so the server sees no
    // aborted connect (a fleet reconnecting every second would double the server's connects).
    let aborted = || db.admin("SHOW GLOBAL STATUS LIKE 'Aborted_connects'");
    let aborted_before = aborted();
    append(&jsonl, &jsonl_line("loss", "0.5", 2, BASE_MS + 1));
    wait_until(Duration::from_secs(60), "the second point", || {
        count(&db) == 2
    });
    assert_eq!(aborted(), aborted_before);
    fs::write(s.path("exit-code"), "0\n").unwrap();
    expect_exit(&wait_with_timeout(child, Duration::from_secs(60)), 0);
    assert_eq!(experiment(&db)[0], "Succeeded");
}

#[test]
fn a_workers_metrics_wait_for_no_lock_on_the_experiment_row_and_outlive_its_deletion() {
    let mut db = MariaDb::start_with_submarine_tables();
    let s = Setup::new();
    let jsonl = s.path("metrics.jsonl");
    let child = sidecar_to(&s, &db).spawn().unwrap();
    append(&jsonl, &jsonl_line("loss", "1.5", 1, BASE_MS));
    wait_until(Duration::from_secs(60), "the first point", || {
        count(&db) == 1
    });

    // Another session reads the experiment in a transaction with a shared lock, as another
    // worker's metric insert does (its foreign key). Writing the experiment row would wait for
    // it (and, after the 10 s lock wait, fail and be retried, while the lock is held); the
    // metrics are stored meanwhile.
    let share_lock = format!(
        "START TRANSACTION; SELECT experiment_status FROM experiment WHERE id = '{EXPERIMENT}' \
         LOCK IN SHARE MODE"
    );
    let reader = db.hold(&share_lock);
    append(&jsonl, &jsonl_line("loss", "0.5", 2, BASE_MS + 1));
    wait_until(
        Duration::from_secs(30),
        "the second point while the experiment row is read",
        || count(&db) == 2,
    );
    drop(reader);

    // MariaDB away and back: what was queued meanwhile is stored while another session reads the
    // experiment row (an outage says nothing about the row, so it is not written again).
    db.stop();
    append(&jsonl, &jsonl_line("loss", "0.75", 3, BASE_MS + 2));
    // Time for the sidecar to read the line and fail to store it.
    thread::sleep(Duration::from_secs(3));
    db.start();
    let reader = db.hold(&share_lock);
    wait_until(
        Duration::from_secs(60),
        "the point from the outage while the experiment row is read",
        || count(&db) == 3,
    );
    drop(reader);

    // The experiment deleted meanwhile (its metrics with it: Submarine's foreign keys cascade):
    // the next point writes the row again, and is stored.
    db.sql(&format!("DELETE FROM experiment WHERE id = '{EXPERIMENT}'"));
    assert_eq!(count(&db), 0);
    append(&jsonl, &jsonl_line("loss", "0.25", 4, BASE_MS + 3));
    wait_until(
        Duration::from_secs(60),
        "the point after the deletion",
        || count(&db) == 1,
    );
    assert_eq!(rows(&db)["loss"], [(4, BASE_MS + 3, 0.25, false)]);
    fs::write(s.path("exit-code"), "0\n").unwrap();
    expect_exit(&wait_with_timeout(child, Duration::from_secs(60)), 0);
    assert_eq!(experiment(&db)[0], "Succeeded");
}
