//! Running the training command: `periscope exec` in the main container, and the command part of
//! `periscope run`.
//!
//! The child's stdout and stderr are copied to files in a capture folder (which the sidecar ships)
//! and passed through unchanged to our own streams, so `kubectl logs` keeps working. Signals that
//! Kubernetes or a person sends us are forwarded. When the child ends, and only after every byte it
//! wrote has reached the capture files, its exit code is written atomically to
//! `<capture>/exit-code`: that file appearing is how a classic sidecar knows the job is over.
//!
//! This module never interprets the child's output and never prints anything of its own.

mod signals;
mod tee;

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWrite;
use tokio::process::Command;

use crate::error::{Classify, ErrorClass};
use crate::fsutil::write_atomic;

/// The file, inside the capture folder, that receives the child's exit code.
pub const EXIT_CODE_FILE: &str = "exit-code";
/// The capture file for the child's stdout.
pub const STDOUT_FILE: &str = "stdout.log";
/// The capture file for the child's stderr.
pub const STDERR_FILE: &str = "stderr.log";

/// How long to keep reading the child's pipes after it exited. A grandchild that inherited them and
/// lives on (a daemon, a stray data loader) would otherwise hold us forever.
const PIPE_GRACE: Duration = Duration::from_secs(5);

/// What to run. Invariant: `program` is not empty.
#[derive(Debug, Clone)]
pub struct ExecSpec {
    pub program: OsString,
    pub args: Vec<OsString>,
    /// Folder for `stdout.log`, `stderr.log` and `exit-code`; created if missing.
    pub capture_dir: PathBuf,
    /// Extra environment for the child.
    pub env: Vec<(OsString, OsString)>,
    /// Working directory for the child; `None` keeps ours.
    pub cwd: Option<PathBuf>,
}

/// How the child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecOutcome {
    /// The exit code a shell would report: the child's code, or 128 + the signal that killed it.
    pub code: i32,
    /// The signal that killed the child, if one did.
    pub signal: Option<i32>,
    /// Bytes captured from stdout and stderr.
    pub captured: [u64; 2],
}

/// Why the command could not be run or its output not captured.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("cannot run `{program}`: {error}")]
    Spawn { program: String, error: io::Error },
    #[error("cannot prepare capture folder `{}`: {error}", path.display())]
    Capture { path: PathBuf, error: io::Error },
    #[error("cannot wait for the command: {0}")]
    Wait(io::Error),
}

impl ExecError {
    /// The exit code a shell uses when a command cannot be started (127 not found, 126 not
    /// executable), so a wrapped job fails the way the bare command would.
    pub fn shell_code(&self) -> Option<i32> {
        match self {
            ExecError::Spawn { error, .. } if error.kind() == io::ErrorKind::NotFound => Some(127),
            ExecError::Spawn { .. } => Some(126),
            _ => None,
        }
    }
}

impl Classify for ExecError {
    fn class(&self) -> ErrorClass {
        match self {
            ExecError::Spawn { error, .. } if error.kind() == io::ErrorKind::NotFound => {
                ErrorClass::NotFound
            }
            ExecError::Spawn { .. } => ErrorClass::Usage,
            ExecError::Capture { .. } => ErrorClass::Io,
            ExecError::Wait(_) => ErrorClass::Internal,
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            ExecError::Spawn { .. } => {
                Some("check the command after `--` and the PATH of this container".into())
            }
            ExecError::Capture { .. } => {
                Some("the capture folder must be writable (a shared emptyDir in a pod)".into())
            }
            ExecError::Wait(_) => None,
        }
    }
}

/// Runs the command to its end, copying its output to the capture files and to `out` / `err`.
pub async fn run<O, E>(spec: &ExecSpec, out: O, err: E) -> Result<ExecOutcome, ExecError>
where
    O: AsyncWrite + Unpin + Send + 'static,
    E: AsyncWrite + Unpin + Send + 'static,
{
    let capture = |error| ExecError::Capture {
        path: spec.capture_dir.clone(),
        error,
    };
    std::fs::create_dir_all(&spec.capture_dir).map_err(capture)?;
    // A restarted container must not let the sidecar see the previous run's exit code.
    match std::fs::remove_file(spec.capture_dir.join(EXIT_CODE_FILE)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(capture(e)),
        _ => {}
    }
    let stdout_file = tee::open_capture(&spec.capture_dir.join(STDOUT_FILE)).map_err(capture)?;
    let stderr_file = tee::open_capture(&spec.capture_dir.join(STDERR_FILE)).map_err(capture)?;

    let interactive = signals::stdin_is_terminal();
    let mut command = Command::new(&spec.program);
    command
        .args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::inherit())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(false);
    if let Some(cwd) = &spec.cwd {
        command.current_dir(cwd);
    }
    if !interactive {
        // Its own process group, so a forwarded signal reaches a shell wrapper's children too.
        command.process_group(0);
    }
    let mut child = command.spawn().map_err(|error| ExecError::Spawn {
        program: spec.program.to_string_lossy().into_owned(),
        error,
    })?;
    // Both pipes were requested above, so both are present.
    let child_out = child
        .stdout
        .take()
        .ok_or_else(|| ExecError::Wait(io::Error::other("no stdout pipe")))?;
    let child_err = child
        .stderr
        .take()
        .ok_or_else(|| ExecError::Wait(io::Error::other("no stderr pipe")))?;
    let out_task = tokio::spawn(tee::copy(child_out, out, stdout_file));
    let err_task = tokio::spawn(tee::copy(child_err, err, stderr_file));

    let pid = child.id();
    let status = signals::wait_forwarding(&mut child, pid, !interactive)
        .await
        .map_err(ExecError::Wait)?;

    let captured = [
        tee::finish(out_task, PIPE_GRACE).await,
        tee::finish(err_task, PIPE_GRACE).await,
    ];
    let outcome = outcome_of(status, captured);
    write_exit_code(&spec.capture_dir, outcome.code).map_err(capture)?;
    Ok(outcome)
}

/// The signal a shell's exit code says ended a command (`130` → `SIGINT`), for the common ones.
pub fn signal_of(code: i32) -> Option<&'static str> {
    Some(match code.checked_sub(128)? {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGABRT => "SIGABRT",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGTERM => "SIGTERM",
        _ => return None,
    })
}

/// How a command run with [`run_here`] ended.
#[derive(Debug)]
pub struct Ran {
    /// The exit code a shell would report (127 or 126 when it could not be started).
    pub code: i32,
    /// Why it could not be started, when it could not.
    pub not_started: Option<ExecError>,
}

/// Runs the command with this process's own stdout and stderr passed through (see [`run`]). A
/// command that cannot be started gets a shell's code (127 not found, 126 not executable) and
/// the exit-code file is still written, so a waiting sidecar learns that the job is over; the
/// reason comes back beside the code for the caller to show.
pub async fn run_here(spec: &ExecSpec) -> Result<Ran, ExecError> {
    let out = own_stream(1).map_err(ExecError::Wait)?;
    let err = own_stream(2).map_err(ExecError::Wait)?;
    match run(spec, out, err).await {
        Ok(outcome) => Ok(Ran {
            code: outcome.code,
            not_started: None,
        }),
        Err(e) => match e.shell_code() {
            Some(code) => {
                if let Err(w) = write_exit_code(&spec.capture_dir, code) {
                    tracing::warn!(error = %w, "cannot write the exit-code file");
                }
                Ok(Ran {
                    code,
                    not_started: Some(e),
                })
            }
            None => Err(e),
        },
    }
}

/// Our stdout (1) or stderr (2) as an async writer, on a duplicated descriptor.
fn own_stream(fd: i32) -> io::Result<tokio::fs::File> {
    use std::os::fd::BorrowedFd;
    // SAFETY: descriptors 1 and 2 stay open for the life of the process; we only borrow them to dup.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let owned = borrowed.try_clone_to_owned()?;
    Ok(tokio::fs::File::from_std(std::fs::File::from(owned)))
}

/// Records a code that was not produced by running the command (it could not be started), so a
/// sidecar waiting for the file still learns that the job is over.
pub fn write_exit_code(capture_dir: &Path, code: i32) -> io::Result<()> {
    std::fs::create_dir_all(capture_dir)?;
    write_atomic(
        &capture_dir.join(EXIT_CODE_FILE),
        format!("{code}\n").as_bytes(),
    )
}

fn outcome_of(status: std::process::ExitStatus, captured: [u64; 2]) -> ExecOutcome {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => ExecOutcome {
            code,
            signal: None,
            captured,
        },
        (None, Some(sig)) => ExecOutcome {
            code: 128 + sig,
            signal: Some(sig),
            captured,
        },
        // Neither a code nor a signal cannot happen on Unix for a child that has exited.
        (None, None) => ExecOutcome {
            code: 1,
            signal: None,
            captured,
        },
    }
}
