//! `periscope exec`: exit codes, both streams captured and passed through, signals forwarded, and
//! nothing lost at the end of a command that exits right after writing.

use std::fs;
use std::time::Duration;

use crate::harness::{periscope, run, sigterm_when_ready};

#[test]
fn passes_exit_code_and_captures_both_streams() {
    let dir = tempfile::tempdir().unwrap();
    let ran = run(periscope()
        .arg("exec")
        .arg("--capture-dir")
        .arg(dir.path())
        .args(["--", "sh", "-c", "echo to-out; echo to-err >&2; exit 7"]));
    ran.expect_code(7);
    assert_eq!(ran.stdout, "to-out\n", "stdout is passed through unchanged");
    assert!(
        ran.stderr.contains("to-err\n"),
        "stderr is passed through: {}",
        ran.stderr
    );
    assert_eq!(
        fs::read_to_string(dir.path().join("stdout.log")).unwrap(),
        "to-out\n"
    );
    assert_eq!(
        fs::read_to_string(dir.path().join("stderr.log")).unwrap(),
        "to-err\n"
    );
    assert_eq!(
        fs::read_to_string(dir.path().join("exit-code")).unwrap(),
        "7\n"
    );
}

#[test]
fn restart_appends_to_capture_and_replaces_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    for (word, code) in [("first", "0"), ("second", "4")] {
        run(periscope()
            .arg("exec")
            .arg("--capture-dir")
            .arg(dir.path())
            .args(["--", "sh", "-c", &format!("echo {word}; exit {code}")]));
    }
    assert_eq!(
        fs::read_to_string(dir.path().join("stdout.log")).unwrap(),
        "first\nsecond\n"
    );
    assert_eq!(
        fs::read_to_string(dir.path().join("exit-code")).unwrap(),
        "4\n"
    );
}

#[test]
fn nothing_lost_when_a_command_writes_a_lot_and_exits_at_once() {
    let dir = tempfile::tempdir().unwrap();
    // 200,000 numbered lines on stdout, and some on stderr, then exit immediately.
    let script = "seq 1 200000; seq 1 5000 >&2";
    let ran = run(periscope()
        .arg("exec")
        .arg("--capture-dir")
        .arg(dir.path())
        .args(["--", "sh", "-c", script]));
    ran.expect_code(0);
    let expected: String = (1..=200_000).map(|i| format!("{i}\n")).collect();
    assert_eq!(ran.stdout.len(), expected.len());
    assert!(ran.stdout == expected, "passed-through stdout differs");
    let captured = fs::read_to_string(dir.path().join("stdout.log")).unwrap();
    assert!(
        captured == expected,
        "captured stdout differs ({} vs {} bytes)",
        captured.len(),
        expected.len()
    );
    let expected_err: String = (1..=5000).map(|i| format!("{i}\n")).collect();
    assert_eq!(
        fs::read_to_string(dir.path().join("stderr.log")).unwrap(),
        expected_err
    );
}

#[test]
fn forwards_sigterm_and_reports_the_commands_own_exit() {
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("ready");
    // The command saves a "checkpoint" on SIGTERM and exits 0, as a well-behaved trainer does.
    let script = format!(
        "trap 'echo saved-checkpoint; exit 0' TERM; touch {}; while true; do sleep 0.1; done",
        ready.display()
    );
    let out = sigterm_when_ready(
        periscope()
            .arg("exec")
            .arg("--capture-dir")
            .arg(dir.path().join("cap"))
            .args(["--", "sh", "-c", &script]),
        &ready,
        Duration::from_secs(20),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "saved-checkpoint\n");
    let cap = dir.path().join("cap");
    assert_eq!(
        fs::read_to_string(cap.join("stdout.log")).unwrap(),
        "saved-checkpoint\n"
    );
    assert_eq!(fs::read_to_string(cap.join("exit-code")).unwrap(), "0\n");
}

#[test]
fn a_command_killed_by_a_signal_exits_128_plus_n() {
    let dir = tempfile::tempdir().unwrap();
    run(periscope()
        .arg("exec")
        .arg("--capture-dir")
        .arg(dir.path())
        .args(["--", "sh", "-c", "kill -KILL $$"]))
    .expect_code(137);
    assert_eq!(
        fs::read_to_string(dir.path().join("exit-code")).unwrap(),
        "137\n"
    );
}

#[test]
fn a_missing_command_exits_127_and_still_writes_the_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    run(periscope()
        .arg("exec")
        .arg("--capture-dir")
        .arg(dir.path())
        .args(["--", "periscope-no-such-command"]))
    .expect_code(127)
    .expect_output("periscope-no-such-command");
    assert_eq!(
        fs::read_to_string(dir.path().join("exit-code")).unwrap(),
        "127\n"
    );
}
