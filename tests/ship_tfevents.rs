//! The sidecar's tf.events mirror: the stored copy is always cut at a record boundary, and after a
//! drain TensorBoard's own loader reads every scalar of the local file from it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::periscope;
use crate::harness::python::run_script;

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
