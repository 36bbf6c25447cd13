//! `periscope run`: the all-in-one mode for bare VMs, end to end with the example job, and the
//! README's quickstart command itself, so it cannot rot.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::periscope;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

fn example() -> String {
    format!("{}/examples/training-job/", repo().display())
}

fn output(cmd: &mut Command) -> (Option<i32>, String, String) {
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn runs_the_example_and_stores_its_logs_and_tfevents() {
    let data = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) = output(
        periscope()
            .args([
                "run",
                "--experiment-id",
                "exp-quick",
                "--source",
                &example(),
                "--data-dir",
            ])
            .arg(data.path())
            .args(["--", "python3", "train.py", "--epochs", "3"]),
    );
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains("epoch 3/3"),
        "the job's output is shown live: {stdout}"
    );
    // The code was localized and the job ran in it, with CODE_PATH set.
    let code_dir = data.path().join("code/training-job");
    assert!(code_dir.join("train.py").is_file());
    assert!(
        stdout.contains(&format!("code at {}", code_dir.display())),
        "{stdout}"
    );
    let record = fs::read_to_string(data.path().join("code/.periscope/localized.json")).unwrap();
    assert!(record.contains("\"into\": \"training-job\""), "{record}");
    // Logs in storage are byte for byte what the job printed.
    let storage = data.path().join("storage/exp-quick/worker-0");
    let (code, stored, _) = output(
        periscope()
            .args(["logs", "cat"])
            .arg(storage.join("logs/stdout.log")),
    );
    assert_eq!(code, Some(0));
    assert_eq!(stored, stdout, "stored stdout equals what was shown");
    let (_, stored_err, _) = output(
        periscope()
            .args(["logs", "cat"])
            .arg(storage.join("logs/stderr.log")),
    );
    assert!(
        stored_err.contains("warning: learning rate schedule is a demo"),
        "{stored_err}"
    );
    // The tf.events mirror holds every scalar: 2 tags x 30 steps.
    let (code, scalars, err) = output(
        periscope()
            .args(["tfevents", "scalars", "--format", "jsonl"])
            .arg(storage.join("tfevents")),
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(scalars.lines().count(), 60, "{scalars}");
    assert!(scalars.contains("\"tag\":\"train/loss\""), "{scalars}");
    // Metrics, the code revision and the run's status are in the embedded metastore.
    let metastore = format!("sqlite://{}/metastore.db", data.path().display());
    let (code, listing, err) =
        output(periscope().args(["metrics", "ls", "--metastore", &metastore]));
    assert_eq!(code, Some(0), "{err}");
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("exp-quick") && l.contains("Succeeded")),
        "{listing}"
    );
    let (_, series, _) =
        output(periscope().args(["metrics", "ls", "exp-quick", "--metastore", &metastore]));
    assert!(
        series
            .lines()
            .any(|l| l.starts_with("train/loss ") && l.contains(" 30 ")),
        "{series}"
    );
    let (_, epochs, _) = output(periscope().args([
        "metrics",
        "show",
        "exp-quick",
        "--key",
        "epoch_loss",
        "--json",
        "--metastore",
        &metastore,
    ]));
    assert_eq!(
        epochs.lines().count(),
        3,
        "one epoch_loss point per epoch: {epochs}"
    );
    let (_, params, _) = output(periscope().args([
        "metrics",
        "show",
        "exp-quick",
        "--params",
        "--metastore",
        &metastore,
    ]));
    assert!(params.contains("code.training-job.revision"), "{params}");
    // `runs ls` and `runs show` read the same metastore and storage.
    let (code, runs, err) = output(
        periscope()
            .args(["runs", "ls", "--data-dir"])
            .arg(data.path()),
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(
        runs.lines()
            .any(|l| l.starts_with("exp-quick") && l.contains("Succeeded")),
        "{runs}"
    );
    let (code, show, err) = output(
        periscope()
            .args(["runs", "show", "exp-quick", "--data-dir"])
            .arg(data.path()),
    );
    assert_eq!(code, Some(0), "{err}");
    for needle in [
        "status:   Succeeded",
        "code.training-job.revision",
        "worker-0/logs/stdout.log",
        "train/loss",
    ] {
        assert!(
            show.contains(needle),
            "`{needle}` missing from runs show:\n{show}"
        );
    }
}

#[test]
fn passes_the_commands_exit_code_through() {
    let data = tempfile::tempdir().unwrap();
    let (code, _, stderr) = output(
        periscope()
            .args(["run", "--source", &example(), "--data-dir"])
            .arg(data.path())
            .args(["--", "python3", "train.py", "--epochs", "1", "--fail"]),
    );
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains("failing on purpose"), "{stderr}");
    let metastore = format!("sqlite://{}/metastore.db", data.path().display());
    let (_, listing, _) = output(periscope().args(["metrics", "ls", "--metastore", &metastore]));
    assert!(
        listing.contains("Failed"),
        "a failing command marks the run Failed: {listing}"
    );
    let (code, _, stderr) = output(
        periscope()
            .args(["run", "--data-dir"])
            .arg(data.path())
            .args(["--", "periscope-no-such-command"]),
    );
    assert_eq!(code, Some(127), "{stderr}");
}

/// The quickstart line of the README's "Quick start" section, run as written (with the freshly
/// built binary in place of `cargo run --`) in a folder that holds `examples/`.
#[test]
fn the_readme_quickstart_command_works_as_written() {
    let readme = fs::read_to_string(repo().join("README.md")).unwrap();
    let line = readme
        .lines()
        .find(|l| l.starts_with("cargo run -- run "))
        .expect("the README has a `cargo run -- run` quickstart line");
    let command = line.replacen("cargo run --", env!("CARGO_BIN_EXE_periscope"), 1);
    let work = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(repo().join("examples"), work.path().join("examples")).unwrap();
    let (code, stdout, stderr) = output(
        Command::new("sh")
            .arg("-c")
            .arg(&command)
            .current_dir(work.path())
            .env("PERISCOPE_TERMINATION_LOG", "/dev/null")
            .env_remove("PERISCOPE_DATA_DIR"),
    );
    assert_eq!(
        code,
        Some(0),
        "`{command}` failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("done"), "{stdout}");
    assert!(
        work.path().join("periscope-data/storage").is_dir(),
        "embedded defaults live in ./periscope-data"
    );
    let record = fs::read_to_string(
        work.path()
            .join("periscope-data/code/.periscope/localized.json"),
    )
    .unwrap();
    let commit = crate::examples::example_commit();
    assert!(
        record.contains(&commit),
        "the example's commit {commit} is recorded: {record}"
    );
}

/// `periscope run` with the example job and `--metastore URL`; returns the job's stdout after
/// checking that the run succeeded.
fn run_example_into(metastore: &str, experiment: &str, data: &Path) -> String {
    let (code, stdout, stderr) = output(
        periscope()
            .args([
                "run",
                "--experiment-id",
                experiment,
                "--metastore",
                metastore,
            ])
            .args(["--source", &example(), "--data-dir"])
            .arg(data)
            .args(["--", "python3", "train.py", "--epochs", "2"]),
    );
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    stdout
}

#[test]
fn run_sends_metrics_params_and_status_to_an_mlflow_tracking_server() {
    let server = crate::harness::mlflow::MlflowServer::start();
    let data = tempfile::tempdir().unwrap();
    run_example_into(
        &format!("mlflow+{}", server.uri()),
        "exp-run-mlflow",
        data.path(),
    );
    // The run is in the experiment named after the experiment id, as the sidecar makes it.
    let read = server.read("exp-run-mlflow");
    let runs = read["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 1, "{read}");
    let run = &runs[0];
    assert_eq!(run["status"], "FINISHED", "{run}");
    let metrics = run["metrics"].as_object().expect("metrics");
    assert_eq!(metrics["epoch_loss"].as_array().unwrap().len(), 2, "{run}");
    assert_eq!(metrics["train/loss"].as_array().unwrap().len(), 20, "{run}");
    assert!(
        run["params"]
            .as_object()
            .unwrap()
            .contains_key("code.training-job.revision"),
        "{run}"
    );
    // Nothing went into the embedded metastore instead.
    assert!(!data.path().join("metastore.db").exists());
}

#[test]
fn run_sends_metrics_params_and_status_to_submarines_mariadb() {
    let db = crate::harness::mariadb::MariaDb::start_with_submarine_tables();
    let data = tempfile::tempdir().unwrap();
    run_example_into(&db.url(), "exp-run-maria", data.path());
    let count = |sql: &str| db.sql(sql).trim().to_string();
    assert_eq!(
        count("SELECT COUNT(*) FROM metric WHERE id = 'exp-run-maria' AND `key` = 'epoch_loss'"),
        "2"
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM metric WHERE id = 'exp-run-maria' AND `key` = 'train/loss'"),
        "20"
    );
    assert_eq!(
        count("SELECT experiment_status FROM experiment WHERE id = 'exp-run-maria'"),
        "Succeeded"
    );
    assert_eq!(
        count(
            "SELECT COUNT(*) FROM param WHERE id = 'exp-run-maria' \
             AND `key` = 'code.training-job.revision'"
        ),
        "1"
    );
    assert!(!data.path().join("metastore.db").exists());
}
