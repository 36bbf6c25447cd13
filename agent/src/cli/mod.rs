//! The CLI layer: each command's flags, and everything it prints for people.
//!
//! Commands return `Result<ExitCode, Failure>`; `main.rs` turns a [`Failure`] into a message, an
//! exit code and the termination message.

pub mod artifacts;
pub mod data_dir;
pub mod exec;
pub mod format;
pub mod install;
pub mod localize;
pub mod logs;
pub mod metrics;
pub mod progress;
pub mod run;
pub mod runs;
pub mod save_flags;
pub mod ship_flags;
pub mod sidecar;
pub mod size;
pub mod storage_url;
pub mod tfevents;
pub mod version;

use std::error::Error;
use std::future::Future;
use std::process::ExitCode;

use periscope::error::{Classify, ErrorClass};

/// A command's failure, ready to be shown: what failed (with its causes), its class, and a hint.
#[derive(Debug)]
pub struct Failure {
    pub class: ErrorClass,
    pub message: String,
    pub hint: Option<String>,
}

impl Failure {
    /// A failure with no library error behind it.
    pub fn new(class: ErrorClass, message: impl Into<String>, hint: Option<String>) -> Self {
        Failure {
            class,
            message: message.into(),
            hint,
        }
    }
}

impl<E: Classify + Error> From<E> for Failure {
    fn from(error: E) -> Self {
        let mut message = error.to_string();
        let mut cause = error.source();
        while let Some(c) = cause {
            let text = c.to_string();
            if !message.contains(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            cause = c.source();
        }
        Failure {
            class: error.class(),
            message,
            hint: error.hint(),
        }
    }
}

/// An exit code as the process's own (codes above 255 wrap as a shell's would).
pub fn exit_code(code: i32) -> ExitCode {
    ExitCode::from((code & 0xff) as u8)
}

/// Runs an async command on a multi-threaded runtime.
pub fn block_on<F: Future<Output = Result<ExitCode, Failure>>>(
    future: F,
) -> Result<ExitCode, Failure> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            Failure::new(
                ErrorClass::Internal,
                format!("cannot start the async runtime: {e}"),
                None,
            )
        })?;
    runtime.block_on(future)
}
