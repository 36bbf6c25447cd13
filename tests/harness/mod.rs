//! The test harness: runs the `periscope` binary and starts real servers on 127.0.0.1.
//!
//! Every server helper binds to 127.0.0.1 on a free port, and stops when its handle is dropped.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub mod archive;
pub mod http_server;
pub mod localize;
pub mod proxy;
pub mod python;
pub mod tls;
// Git servers (daemon, smart HTTP, sshd) for tests/localize_git.rs.
pub mod git;
// Git LFS (giftless) for tests/localize_git.rs.
pub mod lfs;

/// Spawns `cmd` with piped stdout and stderr, waits (at most `limit`) until the command it wraps
/// has created `ready`, sends the child SIGTERM and returns its output.
pub fn sigterm_when_ready(cmd: &mut Command, ready: &Path, limit: std::time::Duration) -> Output {
    use std::process::Stdio;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + limit;
    while !ready.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the command never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait_with_output().unwrap()
}

/// The `periscope` binary under test.
pub fn periscope() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_periscope"));
    // Tests must not write to a real termination log or inherit the developer's settings.
    cmd.env_remove("PERISCOPE_SOURCE")
        .env_remove("PERISCOPE_DEST")
        .env_remove("GIT_SYNC_REPO")
        .env_remove("GITSYNC_REPO")
        // A developer's MLflow settings would send the sidecar's metrics to their server.
        .env_remove("MLFLOW_TRACKING_URI")
        .env_remove("MLFLOW_RUN_ID")
        .env_remove("MLFLOW_EXPERIMENT_NAME")
        .env("PERISCOPE_TERMINATION_LOG", "/dev/null")
        // A developer's proxy would see (or refuse) the tests' requests to 127.0.0.1; the proxy
        // tests set their own.
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("https_proxy")
        .env_remove("HTTPS_PROXY")
        .env_remove("all_proxy")
        .env_remove("ALL_PROXY")
        .env_remove("no_proxy")
        .env_remove("NO_PROXY")
        // Sidecars started in parallel must not fight over the default 127.0.0.1:9090; a test that
        // probes the endpoint passes its own --listen.
        .env("PERISCOPE_LISTEN", "127.0.0.1:0")
        .env("PERISCOPE_LOG_LEVEL", "info")
        // Without keys in its environment, a cloud client asks the instance metadata service at a
        // link-local address for credentials. Tests only ever contact 127.0.0.1: point every
        // such endpoint at a closed local port, so a test that forgets its keys fails here.
        .env("AWS_METADATA_ENDPOINT", "http://127.0.0.1:1")
        .env_remove("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
        .env_remove("AWS_CONTAINER_CREDENTIALS_FULL_URI")
        .env(
            "AZURE_MSI_ENDPOINT",
            "http://127.0.0.1:1/metadata/identity/oauth2/token",
        )
        .env("GCE_METADATA_HOST", "127.0.0.1:1")
        .env("GCE_METADATA_IP", "127.0.0.1:1");
    cmd
}

/// Runs a command and returns its output, with stdout and stderr as text.
pub fn run(cmd: &mut Command) -> Ran {
    let out: Output = cmd.output().expect("cannot start command");
    Ran {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A finished command.
#[derive(Debug)]
pub struct Ran {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    /// Panics with both streams unless the exit code is `code`.
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            Some(code),
            "expected exit code {code}\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// Panics unless stdout or stderr contains `needle`.
    #[track_caller]
    pub fn expect_output(&self, needle: &str) -> &Self {
        assert!(
            self.stdout.contains(needle) || self.stderr.contains(needle),
            "expected `{needle}` in output\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// Panics if stdout or stderr contains `needle` (e.g. a secret).
    #[track_caller]
    pub fn refute_output(&self, needle: &str) -> &Self {
        assert!(
            !self.stdout.contains(needle) && !self.stderr.contains(needle),
            "`{needle}` must not appear in output\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout,
            self.stderr
        );
        self
    }
}

/// The folder where `tests/run` installed the test tools (Python venv, npm servers).
pub fn tools_dir() -> PathBuf {
    match std::env::var_os("PERISCOPE_TEST_TOOLS") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-tools"),
    }
}

/// A tool installed by `tests/run`; panics with the fix when it is missing, so a test never passes
/// by skipping its server.
pub fn tool(relative: &str) -> PathBuf {
    let path = tools_dir().join(relative);
    assert!(
        path.exists(),
        "{} is missing: run `tests/run` once to install the test servers",
        path.display()
    );
    path
}

/// The Python interpreter of the test venv (with tensorboard, tensorboardX, moto).
pub fn python() -> PathBuf {
    tool("venv/bin/python")
}

/// A free TCP port on 127.0.0.1 (bound and released; good enough for tests that start a server
/// right away).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}
pub mod azurite;
pub mod gcs;
pub mod mariadb;
pub mod metrics;
pub mod mlflow;
pub mod process;
pub mod rawhttp;
pub mod s3;
pub mod tinyproxy;
pub mod webhook;
