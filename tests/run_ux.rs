//! `periscope run` as a data scientist meets it in the first hour: Ctrl-C at a terminal, a closed
//! terminal, runs started together, a reused experiment id, a mistyped storage URL, two jobs in
//! one data folder, and reading back what a run wrote without flags.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::harness::{periscope, run, Ran};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

/// A Python job that prints `job-is-ready`, waits, and on Ctrl-C prints its last words and exits 130,
/// as a training script that saves on KeyboardInterrupt does.
const PATIENT_JOB: &str = "import sys, time\n\
try:\n    print('job-is-ready', flush=True)\n    time.sleep(120)\n\
except KeyboardInterrupt:\n    print('interrupted: saving what I have', flush=True)\n    sys.exit(130)\n";

/// Storage that never answers (a closed port on 127.0.0.1): a drain into it waits for its whole
/// timeout.
const DEAD_S3: [(&str, &str); 3] = [
    ("AWS_ENDPOINT_URL", "http://127.0.0.1:1"),
    ("AWS_ACCESS_KEY_ID", "test"),
    ("AWS_SECRET_ACCESS_KEY", "test"),
];

/// Runs `periscope ARGS` in a new pseudo-terminal (`tests/python/pty_run.py`) and presses Ctrl-C
/// `presses` times once `job-is-ready` is shown. Returns `{"code", "shown"}`.
fn in_a_terminal(args: &[&str], cwd: &Path, presses: u32, env: &[(&str, &str)]) -> Value {
    let mut binary = periscope();
    binary.envs(env.iter().copied());
    let mut cmd = Command::new(crate::harness::python());
    for (key, value) in binary.get_envs() {
        match value {
            Some(v) => cmd.env(key, v),
            None => cmd.env_remove(key),
        };
    }
    let out = cmd
        .arg(crate::harness::python::script("pty_run.py"))
        .args(["job-is-ready", &presses.to_string(), "--"])
        .arg(binary.get_program())
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pty_run.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `periscope runs ls` in `data`.
fn runs_ls(data: &Path) -> String {
    let ran = run(periscope().args(["runs", "ls", "--data-dir"]).arg(data));
    ran.expect_code(0);
    ran.stdout.clone()
}

#[test]
fn ctrl_c_at_a_terminal_reaches_the_job_and_periscope_records_how_it_ended() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_arg = data.to_str().unwrap();
    let got = in_a_terminal(
        &[
            "run",
            "--experiment-id",
            "ctrl-c",
            "--data-dir",
            data_arg,
            "--",
            "python3",
            "-c",
            PATIENT_JOB,
        ],
        dir.path(),
        1,
        &[],
    );
    let shown = got["shown"].as_str().unwrap();
    assert_eq!(got["code"], 130, "{shown}");
    assert!(shown.contains("interrupted: saving what I have"), "{shown}");
    assert!(
        shown.contains("the command was ended by SIGINT (exit 130)"),
        "Periscope says how the job ended: {shown}"
    );
    // What the job printed last reached storage, and the run is over, not Running forever.
    let stored = run(periscope()
        .args(["logs", "cat"])
        .arg(data.join("storage/ctrl-c/worker-0/logs/stdout.log")));
    stored.expect_code(0);
    assert!(
        stored.stdout.contains("interrupted: saving what I have"),
        "{}",
        stored.stdout
    );
    let runs = runs_ls(&data);
    assert!(
        runs.lines()
            .any(|l| l.starts_with("ctrl-c ") && l.contains("Failed")),
        "{runs}"
    );
}

#[test]
fn a_second_ctrl_c_ends_the_drain_and_says_what_is_left() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let got = in_a_terminal(
        &[
            "run",
            "--experiment-id",
            "twice",
            "--data-dir",
            data.to_str().unwrap(),
            "--storage",
            "s3://bucket/jobs",
            "--drain-timeout",
            "600",
            "--",
            "python3",
            "-c",
            PATIENT_JOB,
        ],
        dir.path(),
        2,
        &DEAD_S3,
    );
    let shown = got["shown"].as_str().unwrap();
    assert_eq!(got["code"], 130, "{shown}");
    assert!(
        shown.contains("stopped by second stop request with"),
        "{shown}"
    );
    assert!(
        shown.contains("--resume"),
        "the summary says how to ship the rest: {shown}"
    );
}

/// A sidecar-style stop during the drain: SIGHUP (the terminal closed) ends it as SIGTERM does.
#[test]
fn sighup_during_the_drain_ends_it_like_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("job-ended");
    let child = periscope()
        .args(["run", "--experiment-id", "hup", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--storage", "s3://bucket/jobs", "--drain-timeout", "600"])
        .args(["--", "sh", "-c"])
        .arg(format!("echo bye; touch {}", ready.display()))
        .envs(DEAD_S3)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    while !ready.exists() {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // The drain is under way once the job's exit code is on disk.
    let exit = dir.path().join("data/runs/hup/worker-0/exit-code");
    while !exit.exists() {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "exits with the job's code: {stderr}"
    );
    assert!(
        stderr.contains("stopped by second stop request"),
        "{stderr}"
    );
}

#[test]
fn two_runs_started_together_get_two_experiment_ids() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let start = || {
        periscope()
            .args(["run", "--data-dir"])
            .arg(&data)
            .args(["--", "sh", "-c", "echo $JOB_ID"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (start(), start());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    for o in [&a, &b] {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let id = |o: &std::process::Output| String::from_utf8_lossy(&o.stdout).trim().to_string();
    let (id_a, id_b) = (id(&a), id(&b));
    assert!(
        id_a.starts_with("run-") && id_b.starts_with("run-"),
        "{id_a} {id_b}"
    );
    assert_ne!(id_a, id_b);
    let runs = runs_ls(&data);
    for id in [&id_a, &id_b] {
        assert!(
            runs.lines()
                .any(|l| l.starts_with(id.as_str()) && l.contains("Succeeded")),
            "{runs}"
        );
    }
    // Each run stored its own log, holding only its own line.
    for id in [&id_a, &id_b] {
        let log = run(periscope()
            .args(["logs", "cat"])
            .arg(data.join(format!("storage/{id}/worker-0/logs/stdout.log"))));
        assert_eq!(log.stdout.trim(), id.as_str());
    }
}

#[test]
fn a_reused_experiment_id_is_refused_unless_resumed_on_purpose() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let attempt = |extra: &[&str], marker: &str| -> Ran {
        let mut cmd = periscope();
        cmd.args(["run", "--experiment-id", "again", "--data-dir"])
            .arg(&data)
            .args(extra)
            .args(["--", "sh", "-c"])
            .arg(format!("touch {marker}"))
            .current_dir(dir.path());
        run(&mut cmd)
    };
    attempt(&[], "first").expect_code(0);
    let refused = attempt(&[], "second");
    refused.expect_code(2);
    assert!(
        refused.stderr.contains("already has a run") && refused.stderr.contains("--resume"),
        "{}",
        refused.stderr
    );
    assert!(
        !dir.path().join("second").exists(),
        "the command did not run"
    );
    attempt(&["--resume"], "third").expect_code(0);
    assert!(dir.path().join("third").exists());
}

#[test]
fn a_storage_url_with_a_typo_is_a_usage_error_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let example = repo().join("examples/training-job");
    for bad in ["s3:/bucket/x", "s3:bucket", "sss://bucket/x"] {
        let ran = run(periscope()
            .args(["run", "--storage", bad, "--source"])
            .arg(&example)
            .args(["--data-dir", "data", "--", "touch", "ran"])
            .current_dir(dir.path()));
        ran.expect_code(2);
        assert!(ran.stderr.contains(bad), "{}", ran.stderr);
    }
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        !dir.path().join("s3:").exists() && !dir.path().join("ran").exists(),
        "nothing stored locally, nothing run: {left:?}"
    );
    assert!(
        !dir.path().join("data/code/training-job").exists(),
        "nothing localized"
    );
}

#[test]
fn a_run_records_exactly_the_sources_it_localized() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let run_with = |id: &str, source: Option<String>| {
        let mut cmd = periscope();
        cmd.args(["run", "--experiment-id", id, "--data-dir"])
            .arg(&data);
        if let Some(s) = source {
            cmd.args(["--source", &s]);
        }
        run(cmd.args(["--", "true"])).expect_code(0);
    };
    let git = format!(
        "git+file://{}",
        repo().join("examples/training-job.git").display()
    );
    let tar = format!(
        "file://{}#into=from-tar",
        repo().join("examples/training-job.tar.gz").display()
    );
    run_with("from-git", Some(git));
    run_with("from-tar", Some(tar));
    run_with("no-source", None);
    let params = |id: &str| {
        let ran = run(periscope()
            .args(["metrics", "show", id, "--params", "--data-dir"])
            .arg(&data));
        ran.expect_code(0);
        ran.stdout.clone()
    };
    let git_params = params("from-git");
    assert!(
        git_params.contains("code.training-job.revision"),
        "{git_params}"
    );
    assert!(!git_params.contains("code.from-tar"), "{git_params}");
    let tar_params = params("from-tar");
    assert!(
        tar_params.contains("code.from-tar.revision"),
        "{tar_params}"
    );
    assert!(!tar_params.contains("code.training-job"), "{tar_params}");
    assert!(!params("no-source").contains("code."));
    let runs = runs_ls(&data);
    let line = runs.lines().find(|l| l.starts_with("no-source ")).unwrap();
    assert!(
        line.trim_end().ends_with(" -"),
        "no code for a run with no source: {runs}"
    );
}

#[test]
fn metrics_and_runs_find_what_run_wrote_with_no_flags() {
    let dir = tempfile::tempdir().unwrap();
    let missing = run(periscope().args(["metrics", "ls"]).current_dir(dir.path()));
    missing.expect_code(3);
    assert!(
        missing.stderr.contains("--data-dir") && missing.stderr.contains("--metastore"),
        "the hint names flags that exist: {}",
        missing.stderr
    );
    let runs_missing = run(periscope().args(["runs", "ls"]).current_dir(dir.path()));
    runs_missing.expect_code(3);
    assert!(
        runs_missing.stderr.contains("--metastore"),
        "{}",
        runs_missing.stderr
    );
    run(periscope()
        .args(["run", "--experiment-id", "here", "--"])
        .args([
            "sh",
            "-c",
            "echo '{\"key\":\"acc\",\"value\":0.5,\"step\":1}' >> $PERISCOPE_METRICS_FILE",
        ])
        .current_dir(dir.path()))
    .expect_code(0);
    for args in [
        &["metrics", "ls"][..],
        &["runs", "ls"],
        &["metrics", "ls", "here"],
    ] {
        let ran = run(periscope().args(args).current_dir(dir.path()));
        ran.expect_code(0);
        assert!(
            ran.stdout.contains("here") || ran.stdout.contains("acc"),
            "{args:?}: {}",
            ran.stdout
        );
    }
    // The same store through a plain path where a metastore URL goes.
    let by_path = run(periscope()
        .args([
            "metrics",
            "ls",
            "--metastore",
            "periscope-data/metastore.db",
        ])
        .current_dir(dir.path()));
    by_path.expect_code(0);
    assert!(by_path.stdout.contains("here"), "{}", by_path.stdout);
}

/// Exit codes 2 and 3 are also codes a command may use: Periscope's own failures say they are.
#[test]
fn periscopes_own_failure_says_the_command_did_not_run() {
    let dir = tempfile::tempdir().unwrap();
    let ran = run(periscope()
        .args([
            "run",
            "--data-dir",
            "data",
            "--storage",
            "s3:/bucket",
            "--",
            "true",
        ])
        .current_dir(dir.path()));
    ran.expect_code(2);
    assert!(
        ran.stderr
            .contains("Periscope's own error: the command did not run"),
        "{}",
        ran.stderr
    );
    let job = run(periscope()
        .args(["run", "--data-dir", "data", "--", "sh", "-c", "exit 3"])
        .current_dir(dir.path()));
    job.expect_code(3);
    assert!(
        job.stderr.contains("the command exited 3"),
        "{}",
        job.stderr
    );
}

/// tensorboardX's `SummaryWriter()` with no logdir writes `./runs/<date>_<host>/`: `run` finds
/// it in the command's working folder and ships it, but not event files that were there before.
#[test]
fn event_files_a_writer_puts_in_its_default_folder_are_shipped_and_old_ones_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("runs/yesterday");
    std::fs::create_dir_all(&old).unwrap();
    std::fs::write(old.join("events.out.tfevents.1.old-host"), b"").unwrap();
    let script = "import time\nfrom tensorboardX import SummaryWriter\n\
w = SummaryWriter()\n\
for step in range(3):\n    w.add_scalar('train/loss', 1.0 / (step + 1), step)\n    time.sleep(0.01)\n\
w.close()\n";
    let ran = run(periscope()
        .args(["run", "--experiment-id", "tbx", "--"])
        .arg(crate::harness::python())
        .args(["-c", script])
        .current_dir(dir.path()));
    ran.expect_code(0);
    assert!(ran.stderr.contains(" 1 event file(s) "), "{}", ran.stderr);
    let stored = dir
        .path()
        .join("periscope-data/storage/tbx/worker-0/tfevents");
    let scalars = run(periscope()
        .args(["tfevents", "scalars", "--format", "jsonl"])
        .arg(&stored));
    scalars.expect_code(0);
    assert_eq!(
        scalars.stdout.matches("\"tag\":\"train/loss\"").count(),
        3,
        "{}",
        scalars.stdout
    );
    assert!(!scalars.stdout.contains("old-host"), "{}", scalars.stdout);
    let metrics = run(periscope()
        .args(["metrics", "ls", "tbx"])
        .current_dir(dir.path()));
    metrics.expect_code(0);
    assert!(
        metrics
            .stdout
            .lines()
            .any(|l| l.contains("train/loss") && l.contains(" 3 ")),
        "{}",
        metrics.stdout
    );
}
