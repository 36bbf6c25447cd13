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
