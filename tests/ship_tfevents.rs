//! The sidecar's tf.events mirror: the stored copy is always cut at a record boundary; a growing
//! file is stored as segments, each byte about once, on `file://`, S3 (moto) and Azure (Azurite),
//! and TensorBoard's own multiplexer reads the same scalars from the stored tree as from the job's
//! folder; a `kill -9` loses nothing; two folders holding the same file name are stored apart;
//! a damaged file is reported in a line, not a line per record.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use periscope::tfevents::proto::{event, Event, SessionLog};
use periscope::tfevents::{EventWriter, ScalarValue};

use crate::harness::azurite::Azurite;
use crate::harness::proxy::Proxy;
use crate::harness::python::run_script;
use crate::harness::s3::S3Server;
use crate::harness::{periscope, run};

/// Whether `bytes` is a whole number of TFRecord frames (length, CRC, data, CRC).
fn ends_at_record_boundary(bytes: &[u8]) -> bool {
    let mut at = 0usize;
    while at < bytes.len() {
        if bytes.len() - at < 12 {
            return false;
        }
        let len = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
        at += 12 + len + 4;
    }
    at == bytes.len()
}

/// A stored event file, not object_store's in-flight upload (`<name>#<n>`, renamed into place when
/// complete).
fn is_stored_event_file(p: &Path) -> bool {
    let name = p.file_name().unwrap().to_string_lossy();
    name.contains("tfevents") && !name.contains('#')
}

fn event_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                found.extend(event_files(&p));
            } else if is_stored_event_file(&p) {
                found.push(p);
            }
        }
    }
    found
}

#[test]
fn mirror_is_cut_at_record_boundaries_and_holds_every_scalar_after_drain() {
    let dir = tempfile::tempdir().unwrap();
    let logdir = dir.path().join("tb");
    fs::create_dir_all(&logdir).unwrap();
    let store = dir.path().join("store");
    let mut sidecar = periscope()
        .args(["sidecar", "--storage"])
        .arg(format!("file://{}", store.display()))
        .arg("--tfevents")
        .arg(&logdir)
        .args([
            "--tfevents-interval",
            "0.2",
            "--poll-interval",
            "0.1",
            "--listen",
            "127.0.0.1:0",
            "--state-dir",
        ])
        .arg(dir.path().join("state"))
        .args(["--experiment-id", "exp-7", "--worker", "chief-0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let writer_dir = logdir.clone();
    let writer = thread::spawn(move || {
        run_script(
            "tfevents_write_slowly.py",
            [writer_dir.to_str().unwrap(), "2000"],
        )
    });
    let mirror = store.join("exp-7/chief-0/tfevents");
    let mut snapshots = 0;
    while !writer.is_finished() {
        for f in event_files(&mirror) {
            // Replaced between listing and reading by the next upload: the next pass reads it.
            let Ok(bytes) = fs::read(&f) else { continue };
            assert!(
                ends_at_record_boundary(&bytes),
                "stored copy {} is torn at {} bytes",
                f.display(),
                bytes.len()
            );
            snapshots += 1;
        }
        thread::sleep(Duration::from_millis(30));
    }
    writer.join().unwrap();
    assert!(
        snapshots > 0,
        "the mirror was never seen while the file grew"
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(sidecar.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(60);
    while sidecar.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "sidecar did not drain");
        thread::sleep(Duration::from_millis(50));
    }
    let out = sidecar.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let local = run_script("tfevents_load.py", [logdir.to_str().unwrap()]);
    let stored = run_script("tfevents_load.py", [mirror.to_str().unwrap()]);
    assert_eq!(
        local.lines().count(),
        4000,
        "the writer wrote 2 scalars x 2000 steps"
    );
    assert_eq!(
        stored, local,
        "TensorBoard reads the same scalars from the stored copy"
    );
}

/// CPU seconds (user + system) that process `pid` has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses and may hold spaces): state is the
    // 3rd field of the whole line, utime the 14th and stime the 15th.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// Once everything is shipped, an idle sidecar sleeps. Reading the files it follows must not wake
/// it up again (file notifications for its own reads once made it spin at 100% CPU).
#[test]
fn an_idle_sidecar_following_logs_and_tfevents_does_not_spin() {
    let dir = tempfile::tempdir().unwrap();
    let logdir = dir.path().join("tb");
    let logs = dir.path().join("logs");
    fs::create_dir_all(&logdir).unwrap();
    fs::create_dir_all(&logs).unwrap();
    fs::write(logs.join("train.log"), "epoch 1 loss 0.5\n").unwrap();
    let mut w = periscope::tfevents::EventWriter::create(&logdir).unwrap();
    w.add_scalar("loss", 1, 1.0, periscope::tfevents::ScalarValue::F32(0.5))
        .unwrap();
    w.flush().unwrap();
    let store = dir.path().join("store");
    let mut sidecar = periscope()
        .args(["sidecar", "--storage"])
        .arg(format!("file://{}", store.display()))
        .arg("--tfevents")
        .arg(&logdir)
        .arg("--logs")
        .arg(format!("{}/*.log", logs.display()))
        .args([
            "--chunk-age",
            "0.2",
            "--tfevents-interval",
            "0.2",
            "--state-dir",
        ])
        .arg(dir.path().join("state"))
        .args(["--experiment-id", "exp-idle", "--worker", "worker-0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Everything shipped: the log chunk and the event file's mirror are stored, and the scalar is
    // in the metastore.
    let worker = store.join("exp-idle/worker-0");
    let db = dir.path().join("state/metastore.db");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let shipped = worker.join("logs/train.log").is_dir()
            && !event_files(&worker.join("tfevents")).is_empty()
            && metric_rows(&db) == 1;
        if shipped {
            break;
        }
        assert!(Instant::now() < deadline, "nothing shipped in 60 s");
        thread::sleep(Duration::from_millis(50));
    }
    thread::sleep(Duration::from_secs(1));
    let before = cpu_seconds(sidecar.id());
    thread::sleep(Duration::from_secs(4));
    let used = cpu_seconds(sidecar.id()) - before;
    sidecar.kill().unwrap();
    sidecar.wait().unwrap();
    // Idle, it wakes a few times a second to poll; a busy loop burns the whole 4 s.
    assert!(used < 1.0, "an idle sidecar used {used:.2} s of CPU in 4 s");
}

/// Rows in the metric table of the SQLite metastore at `db` (0 when it is not there yet).
fn metric_rows(db: &Path) -> u64 {
    let out = periscope()
        .args(["metrics", "show", "exp-idle", "--json", "--metastore"])
        .arg(format!("sqlite://{}", db.display()))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count() as u64
}

/// An event file made ahead of time and appended to the followed file round by round, each round
/// in one write, so the sidecar sees it grow by whole rounds. Invariant: `ends` are the file's
/// size after each round, each a record boundary.
struct Growth {
    name: String,
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

/// `rounds` rounds of about `round_bytes` each: 50 steps of two scalars, then 100 KiB events
/// without scalars up to the round's size.
fn growth(rounds: usize, round_bytes: usize) -> Growth {
    let dir = tempfile::tempdir().unwrap();
    let name = "events.out.tfevents.1700000000.test-host.4242.0".to_string();
    let path = dir.path().join(&name);
    let mut w = EventWriter::create_at(&path, 1_700_000_000.0).unwrap();
    let mut ends = Vec::new();
    let mut step = 0i64;
    for round in 0..rounds {
        for _ in 0..50 {
            let t = 1_700_000_000.0 + step as f64;
            w.add_scalar(
                "train/loss",
                step,
                t,
                ScalarValue::F32(1.0 / (step + 1) as f32),
            )
            .unwrap();
            w.add_scalar(
                "train/lr",
                step,
                t,
                ScalarValue::F64(0.1 * 0.99f64.powi(step as i32)),
            )
            .unwrap();
            step += 1;
        }
        w.flush().unwrap();
        while (fs::metadata(&path).unwrap().len() as usize) < (round + 1) * round_bytes {
            w.write_event(&padding(step, round)).unwrap();
            w.flush().unwrap();
        }
        ends.push(fs::metadata(&path).unwrap().len() as usize);
    }
    drop(w);
    Growth {
        name,
        bytes: fs::read(&path).unwrap(),
        ends,
    }
}

/// A 100 KiB event that holds no scalar: a session log entry (not a start) with a long message.
fn padding(step: i64, round: usize) -> Event {
    let msg: String = (0..100 << 10)
        .map(|i| char::from(b'a' + ((i + round) % 26) as u8))
        .collect();
    Event {
        wall_time: 1_700_000_000.0 + step as f64,
        step,
        what: Some(event::What::SessionLog(SessionLog {
            status: 0,
            checkpoint_path: String::new(),
            msg,
        })),
    }
}

/// Appends `bytes` to `path` in one write.
fn append(path: &Path, bytes: &[u8]) {
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(bytes).unwrap();
}

/// Where a test stores, and how it reads the stored tree back.
struct Store {
    url: String,
    env: Vec<(&'static str, String)>,
}

/// A running sidecar, killed if the test ends (or fails) before stopping it.
struct Sidecar(Option<Child>);

impl Sidecar {
    /// `kill -9`, and wait until it is gone.
    fn kill_9(mut self) {
        if let Some(mut child) = self.0.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts `periscope sidecar` mirroring `roots` to `store` for experiment `exp-m`, worker `w0`,
/// with its stderr in `log`.
fn start_sidecar(store: &Store, roots: &[&Path], state: &Path, log: &Path) -> Sidecar {
    let mut cmd = periscope();
    cmd.args(["sidecar", "--storage", &store.url]);
    for root in roots {
        cmd.arg("--tfevents").arg(root);
    }
    cmd.args(["--tfevents-interval", "0.2", "--poll-interval", "0.1"])
        .arg("--state-dir")
        .arg(state)
        .args(["--experiment-id", "exp-m", "--worker", "w0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(log).unwrap());
    for (k, v) in &store.env {
        cmd.env(k, v);
    }
    Sidecar(Some(cmd.spawn().unwrap()))
}

/// SIGTERM, then the drain must end with exit 0 within a minute.
fn stop_sidecar(mut running: Sidecar, log: &Path) {
    let Some(mut sidecar) = running.0.take() else {
        return;
    };
    // SAFETY: signalling our own child.
    unsafe { libc::kill(sidecar.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(60);
    while sidecar.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "sidecar did not drain");
        thread::sleep(Duration::from_millis(50));
    }
    let status = sidecar.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "{}",
        fs::read_to_string(log).unwrap_or_default()
    );
}

/// Bytes of the followed file the checkpoint says are stored (0 before the first upload).
fn stored_offset(state: &Path, name: &str) -> u64 {
    let Ok(text) = fs::read_to_string(state.join("tfevents-mirror.json")) else {
        return 0;
    };
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    // The first format, `{name: {uploaded, ...}}`, is read too, so these tests run on a binary
    // that still writes it.
    json["files"][name]["stored"]
        .as_u64()
        .or(json[name]["uploaded"].as_u64())
        .unwrap_or(0)
}

/// Waits until the sidecar has stored the followed file up to `end`.
fn wait_stored(state: &Path, name: &str, end: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while stored_offset(state, name) < end as u64 {
        assert!(
            Instant::now() < deadline,
            "{name} not stored up to {end} in 60 s"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// The stored tree of `exp-m/w0/tfevents` as a local folder: the folder itself for `file://`, a
/// copy made by `periscope localize` for an object store.
fn stored_tree(store: &Store, copy_into: &Path) -> PathBuf {
    let base = format!("{}/exp-m/w0/tfevents", store.url);
    if let Some(folder) = base.strip_prefix("file://") {
        return PathBuf::from(folder);
    }
    let mut cmd = periscope();
    cmd.args(["localize", "--dest"])
        .arg(copy_into)
        .args(["--source", &format!("{base}/")]);
    for (k, v) in &store.env {
        cmd.env(k, v);
    }
    run(&mut cmd).expect_code(0);
    copy_into.join("tfevents")
}

/// The stored segments of one file, in name order (the order TensorBoard reads them in).
fn segments(folder: &Path, name: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(folder)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n == name
                || n.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('.'))
        })
        .collect();
    found.sort();
    found
}

/// Every file under `root` whose name marks an event file, relative to `root`.
fn event_file_names(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = event_files(root)
        .iter()
        .map(|p| p.strip_prefix(root).unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// What TensorBoard serves for a log folder, and what `periscope tfevents scalars` prints.
fn readers(folder: &Path) -> (String, String) {
    let tensorboard = run_script("tfevents_tensorboard_scalars.py", [folder]);
    let ran = run(periscope().args(["tfevents", "scalars"]).arg(folder));
    ran.expect_code(0);
    (tensorboard, ran.stdout)
}

/// Grows a file in `rounds` rounds of `round_bytes`, each stored before the next is written;
/// checks the stored tree against the local folder with TensorBoard and Periscope's reader, and
/// returns the local size and the number of segments.
fn mirror_a_growing_file(store: &Store, rounds: usize, round_bytes: usize) -> (u64, usize) {
    let dir = tempfile::tempdir().unwrap();
    let logdir = dir.path().join("tb");
    fs::create_dir_all(logdir.join("run-a")).unwrap();
    let (state, log) = (dir.path().join("state"), dir.path().join("sidecar.log"));
    let g = growth(rounds, round_bytes);
    let local = logdir.join("run-a").join(&g.name);
    let stored_name = format!("run-a/{}", g.name);
    let sidecar = start_sidecar(store, &[&logdir], &state, &log);
    let mut at = 0;
    for &end in &g.ends {
        append(&local, &g.bytes[at..end]);
        at = end;
        wait_stored(&state, &stored_name, end);
    }
    stop_sidecar(sidecar, &log);
    let tree = stored_tree(store, &dir.path().join("copy"));
    let parts = segments(&tree.join("run-a"), &g.name);
    let joined: Vec<u8> = parts.iter().flat_map(|p| fs::read(p).unwrap()).collect();
    assert!(
        joined == g.bytes,
        "the segments, in name order, are not the file"
    );
    let names = event_file_names(&tree);
    assert_eq!(
        names.len(),
        parts.len(),
        "only segments are stored: {names:?}"
    );
    let (tb_local, ours_local) = readers(&logdir);
    let (tb_stored, ours_stored) = readers(&tree);
    assert_eq!(
        tb_local.lines().count(),
        rounds * 100,
        "TensorBoard read every scalar"
    );
    assert!(
        tb_stored == tb_local,
        "TensorBoard reads other scalars from the stored tree"
    );
    assert!(
        ours_stored == ours_local,
        "periscope tfevents scalars reads other scalars from the stored tree"
    );
    (g.bytes.len() as u64, parts.len())
}

#[test]
fn file_store_holds_a_growing_file_as_segments_tensorboard_reads_in_order() {
    let store_dir = tempfile::tempdir().unwrap();
    let store = Store {
        url: format!("file://{}", store_dir.path().display()),
        env: Vec::new(),
    };
    let (_, segments) = mirror_a_growing_file(&store, 6, 1_200_000);
    assert_eq!(
        segments, 6,
        "each round of more than 1 MiB closed its segment"
    );
}

#[test]
fn s3_store_gets_each_byte_about_once_and_tensorboard_reads_the_copy() {
    let s3 = S3Server::start();
    s3.create_bucket("runs");
    let proxy = Proxy::start(([127, 0, 0, 1], s3.port).into());
    let mut env = s3.env();
    for (k, v) in env.iter_mut() {
        if *k == "AWS_ENDPOINT_URL" {
            *v = proxy.url();
        }
    }
    let store = Store {
        url: "s3://runs/team".into(),
        env,
    };
    // Rounds of 700 KB stay below the 1 MiB that closes a segment, so every other upload sends
    // an open tail again; rounds of 6 MB go up in parts.
    let (size, segments) = mirror_a_growing_file(&store, 8, 700_000);
    proxy.wait_until_clients_gone();
    let sent = proxy.sent_upstream();
    assert!(
        sent <= size + size / 2 + (1 << 20),
        "sent {sent} bytes to store a {size}-byte file grown in 8 steps"
    );
    assert_eq!(segments, 4, "two rounds of 700 KB close a segment");
    let before = proxy.sent_upstream();
    let store = Store {
        url: "s3://runs/large-rounds".into(),
        ..store
    };
    let (size, _) = mirror_a_growing_file(&store, 3, 6_000_000);
    proxy.wait_until_clients_gone();
    let sent = proxy.sent_upstream() - before;
    assert!(
        sent <= size + size / 10,
        "sent {sent} bytes to store a {size}-byte file grown in 3 steps of 6 MB"
    );
}

#[test]
fn azure_store_holds_the_segments_tensorboard_reads_in_order() {
    let az = Azurite::start();
    az.create_container("runs");
    let store = Store {
        url: "az://runs/team".into(),
        env: az.env(),
    };
    let (_, segments) = mirror_a_growing_file(&store, 3, 6_000_000);
    assert_eq!(segments, 3);
}

#[test]
fn kill_9_at_any_moment_loses_nothing_and_leaves_no_stray_event_file() {
    let dir = tempfile::tempdir().unwrap();
    let logdir = dir.path().join("tb");
    fs::create_dir_all(logdir.join("run-a")).unwrap();
    let store_dir = dir.path().join("store");
    let store = Store {
        url: format!("file://{}", store_dir.display()),
        env: Vec::new(),
    };
    let (state, log) = (dir.path().join("state"), dir.path().join("sidecar.log"));
    // Rounds of 6 MB go up in parts, so a kill often lands inside an upload.
    let g = growth(6, 6_000_000);
    let local = logdir.join("run-a").join(&g.name);
    let stored_name = format!("run-a/{}", g.name);
    let mut at = 0;
    for (round, &end) in g.ends.iter().enumerate() {
        let sidecar = start_sidecar(&store, &[&logdir], &state, &log);
        append(&local, &g.bytes[at..end]);
        at = end;
        thread::sleep(Duration::from_millis(30 * round as u64));
        sidecar.kill_9();
    }
    let sidecar = start_sidecar(&store, &[&logdir], &state, &log);
    wait_stored(&state, &stored_name, g.bytes.len());
    stop_sidecar(sidecar, &log);
    let tree = store_dir.join("exp-m/w0/tfevents");
    let parts = segments(&tree.join("run-a"), &g.name);
    assert_eq!(
        event_file_names(&tree).len(),
        parts.len(),
        "a kill left a file TensorBoard would read: {:?}",
        event_file_names(&tree)
    );
    let joined: Vec<u8> = parts.iter().flat_map(|p| fs::read(p).unwrap()).collect();
    assert!(
        joined == g.bytes,
        "the segments, in name order, are not the file"
    );
    assert_eq!(readers(&tree).0, readers(&logdir).0);
}

#[test]
fn two_folders_holding_the_same_file_name_are_stored_apart() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a/tb"), dir.path().join("b/tb"));
    let mut files = Vec::new();
    for (root, scale) in [(&a, 1.0f32), (&b, 100.0)] {
        fs::create_dir_all(root).unwrap();
        let path = root.join("events.out.tfevents.1700000000.host.1.0");
        let mut w = EventWriter::create_at(&path, 1_700_000_000.0).unwrap();
        for step in 0..20 {
            w.add_scalar(
                "loss",
                step,
                1_700_000_001.0 + step as f64,
                ScalarValue::F32(scale * step as f32),
            )
            .unwrap();
        }
        w.flush().unwrap();
        files.push(fs::read(&path).unwrap());
    }
    let store_dir = dir.path().join("store");
    let store = Store {
        url: format!("file://{}", store_dir.display()),
        env: Vec::new(),
    };
    let (state, log) = (dir.path().join("state"), dir.path().join("sidecar.log"));
    let sidecar = start_sidecar(&store, &[&a, &b], &state, &log);
    for name in ["a/tb", "b/tb"] {
        wait_stored(
            &state,
            &format!("{name}/events.out.tfevents.1700000000.host.1.0"),
            1,
        );
    }
    stop_sidecar(sidecar, &log);
    let tree = store_dir.join("exp-m/w0/tfevents");
    assert_eq!(
        event_file_names(&tree),
        [
            "a/tb/events.out.tfevents.1700000000.host.1.0",
            "b/tb/events.out.tfevents.1700000000.host.1.0"
        ]
    );
    for (sub, (root, bytes)) in ["a/tb", "b/tb"].iter().zip([&a, &b].iter().zip(&files)) {
        let stored = tree.join(sub);
        assert!(
            fs::read(stored.join("events.out.tfevents.1700000000.host.1.0")).unwrap() == **bytes
        );
        assert_eq!(readers(&stored).0, readers(root).0, "{sub}");
    }
}

#[test]
fn a_damaged_file_is_reported_in_a_line_per_reader_not_a_line_per_record() {
    let dir = tempfile::tempdir().unwrap();
    let logdir = dir.path().join("tb");
    fs::create_dir_all(&logdir).unwrap();
    let path = logdir.join("events.out.tfevents.1700000000.host.1.0");
    let mut w = EventWriter::create_at(&path, 1_700_000_000.0).unwrap();
    for step in 0..500 {
        w.add_scalar(
            "loss",
            step,
            1_700_000_001.0 + step as f64,
            ScalarValue::F32(0.5),
        )
        .unwrap();
    }
    w.flush().unwrap();
    drop(w);
    // Spoil the data of every scalar record after the first ten but the last: 489 records with a
    // good length and a bad checksum.
    let mut bytes = fs::read(&path).unwrap();
    let mut at = 0usize;
    let mut index = 0;
    while at < bytes.len() {
        let len = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
        if index > 10 && index < 500 {
            bytes[at + 12] ^= 0xff;
        }
        at += 12 + len + 4;
        index += 1;
    }
    fs::write(&path, &bytes).unwrap();
    // And a file of garbage, whose framing is broken from its first byte.
    fs::write(
        logdir.join("events.out.tfevents.1700000001.host.2.0"),
        [0x5a; 4096],
    )
    .unwrap();
    let store_dir = dir.path().join("store");
    let store = Store {
        url: format!("file://{}", store_dir.display()),
        env: Vec::new(),
    };
    let (state, log) = (dir.path().join("state"), dir.path().join("sidecar.log"));
    let sidecar = start_sidecar(&store, &[&logdir], &state, &log);
    wait_stored(
        &state,
        "events.out.tfevents.1700000000.host.1.0",
        bytes.len(),
    );
    // Several passes over both files.
    thread::sleep(Duration::from_secs(2));
    stop_sidecar(sidecar, &log);
    let stderr = fs::read_to_string(&log).unwrap();
    let about = |name: &str| {
        stderr
            .lines()
            .filter(|l| l.contains(name) && l.contains("WARN"))
            .count()
    };
    // The mirror and the metrics reader each say it once.
    assert_eq!(about("host.1.0"), 2, "{stderr}");
    assert_eq!(about("host.2.0"), 2, "{stderr}");
    assert!(stderr.contains("489 damaged records"), "{stderr}");
    let mirrored =
        fs::read(store_dir.join("exp-m/w0/tfevents/events.out.tfevents.1700000000.host.1.0"))
            .unwrap();
    assert!(
        mirrored == bytes,
        "damaged records are mirrored as they are"
    );
    let ran = run(periscope().args(["tfevents", "scalars"]).arg(&logdir));
    ran.expect_code(8);
    assert_eq!(
        ran.stderr
            .lines()
            .filter(|l| l.starts_with("warning:"))
            .count(),
        2,
        "{}",
        ran.stderr
    );
    assert!(
        ran.stderr
            .contains("489 damaged records, the first: record at byte"),
        "{}",
        ran.stderr
    );
    assert_eq!(
        ran.stdout.lines().count(),
        11,
        "the eleven good scalars are printed"
    );
}
