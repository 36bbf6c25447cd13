//! Errors of the tf.events library, classified for exit codes.

use std::io;
use std::path::PathBuf;

use crate::error::{Classify, ErrorClass};

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

impl Classify for TfeventsError {
    fn class(&self) -> ErrorClass {
        match self {
            TfeventsError::Read { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                ErrorClass::NotFound
            }
            TfeventsError::NoEventFiles { .. } => ErrorClass::NotFound,
            TfeventsError::Read { .. } | TfeventsError::Write { .. } => ErrorClass::Io,
            TfeventsError::Damaged { .. } => ErrorClass::Damaged,
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            TfeventsError::NoEventFiles { .. } => Some(
                "point at the log folder the job writes (files are named events.out.tfevents.*)"
                    .to_owned(),
            ),
            TfeventsError::Damaged { .. } => Some(
                "every good record was printed; the damaged ones are listed on stderr".to_owned(),
            ),
            _ => None,
        }
    }
}
