//! `periscope run` with the example job localized from real servers: its checked-in git
//! repository served by `git daemon`, and its checked-in tar.gz over HTTP; and Ctrl-C/SIGTERM
//! forwarded to the command.

use std::fs;
use std::path::Path;
use std::time::Duration;

use crate::examples::{example_commit, examples_dir};
use crate::harness::git::GitDaemon;
use crate::harness::http_server::HttpServer;
use crate::harness::{periscope, sigterm_when_ready};

/// Runs the example with `--source SRC`; returns (exit code, stdout, stderr).
fn run_example(data: &Path, source: &str) -> (Option<i32>, String, String) {
    let out = periscope()
        .args([
            "run",
            "--experiment-id",
            "exp-src",
            "--source",
            source,
            "--data-dir",
        ])
        .arg(data)
        .args(["--", "python3", "train.py", "--epochs", "2"])
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn runs_the_example_from_a_git_daemon_and_records_the_commit() {
    let commit = example_commit();
    // git daemon serves examples/training-job.git as it is checked in.
    let daemon = GitDaemon::start(&examples_dir(), false);
    let data = tempfile::tempdir().unwrap();
    // No #ref: the remote's HEAD, as a user would start.
    let (code, stdout, stderr) = run_example(data.path(), &daemon.url("training-job"));
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        data.path().join("code/training-job/.git").is_dir(),
        "a git checkout"
    );
    let record = fs::read_to_string(data.path().join("code/.periscope/localized.json")).unwrap();
    assert!(
        record.contains(&commit),
        "the commit {commit} is recorded: {record}"
    );
    let (code, show, err) = {
        let o = periscope()
            .args(["runs", "show", "exp-src", "--data-dir"])
            .arg(data.path())
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    assert_eq!(code, Some(0), "{err}");
    assert!(
        show.contains(&commit),
        "runs show names the code revision:\n{show}"
    );
    assert!(show.contains("status:   Succeeded"), "{show}");
}

#[test]
fn runs_the_example_from_a_tar_gz_over_http() {
    let server = HttpServer::start();
    let archive = fs::read(examples_dir().join("training-job.tar.gz")).unwrap();
    server.put("/jobs/training-job.tar.gz", archive);
    let data = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) = run_example(data.path(), &server.url("/jobs/training-job.tar.gz"));
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("epoch 2/2"), "{stdout}");
    assert!(data.path().join("code/training-job/train.py").is_file());
    let stored = data.path().join("storage/exp-src/worker-0/logs/stdout.log");
    let o = periscope()
        .args(["logs", "cat"])
        .arg(&stored)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        stdout,
        "the stored log is what was shown"
    );
}

#[test]
fn sigterm_is_forwarded_to_the_command_and_its_exit_code_returned() {
    let data = tempfile::tempdir().unwrap();
    let ready = data.path().join("ready");
    let script = format!(
        "trap 'echo saving checkpoint; exit 0' TERM; touch {}; while true; do sleep 0.1; done",
        ready.display()
    );
    let out = sigterm_when_ready(
        periscope()
            .args(["run", "--experiment-id", "exp-sig", "--data-dir"])
            .arg(data.path())
            .args(["--", "sh", "-c", &script]),
        &ready,
        Duration::from_secs(30),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "saving checkpoint\n");
    // The line written in answer to the signal was shipped too.
    let stored = data.path().join("storage/exp-sig/worker-0/logs/stdout.log");
    let o = periscope()
        .args(["logs", "cat"])
        .arg(&stored)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "saving checkpoint\n");
}
