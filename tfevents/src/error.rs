//! Errors of the tf.events library. How they map to exit codes is the caller's business (the
//! `periscope` crate classifies them).

use std::io;
use std::path::PathBuf;

/// Why reading or writing event files failed. Each variant names the path involved.
#[derive(Debug, thiserror::Error)]
pub enum TfeventsError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no tf.events files under {}", path.display())]
    NoEventFiles { path: PathBuf },
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{damaged} of {files} event files had damage ({records} damaged records)")]
    Damaged {
        files: usize,
        damaged: usize,
        records: u64,
    },
}
