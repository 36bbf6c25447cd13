//! TensorBoard event files: the `periscope-tfevents` crate, re-exported as `periscope::tfevents`,
//! and how its errors map to exit codes.
//!
//! The format code lives in its own crate so the release profile can build it for speed (the rest
//! of the binary is built for size); see the workspace `Cargo.toml`.

use std::io;

pub use periscope_tfevents::*;

use crate::error::{Classify, ErrorClass};

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
            TfeventsError::Read { source, .. } if source.kind() == io::ErrorKind::NotFound => Some(
                "no such file or folder: give the log folder the job writes, or a stored \
                     tree such as periscope-data/storage/<experiment>"
                    .to_owned(),
            ),
            TfeventsError::NoEventFiles { .. } => Some(
                "point at the log folder the job writes (files are named events.out.tfevents.*)"
                    .to_owned(),
            ),
            TfeventsError::Damaged { .. } => Some(
                "every good record was printed; the damage is described on stderr, one line per file".to_owned(),
            ),
            _ => None,
        }
    }
}
