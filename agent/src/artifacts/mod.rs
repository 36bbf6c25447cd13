//! Model artifacts: a folder the job writes, saved to storage as numbered, verified saves.
//!
//! Layout: `<storage>/<experiment>/<worker>/artifacts/<n>/<relative path>`, `n` counting up per
//! save, with `manifest.json` ([`manifest`]) written last, so a save without one is unfinished
//! and a reader must not trust it. A file per idea:
//!
//! * [`walk`]: which entries of the folder are stored and which are skipped (and why);
//! * [`state`]: the push state file that lets a killed push continue the same save;
//! * [`saves`]: the saves already stored under a worker's `artifacts/`;
//! * [`upload`]: one file to one object (multipart above a size), re-read if it changes meanwhile;
//! * [`push`]: the whole push, idempotent and resumable;
//! * [`target`]: a worker's storage location, and pushing several folders there;
//! * [`verify`]: checking a save against its manifest when it is loaded back (`localize`);
//!
//! Stores come only from [`crate::storage`]. This module never prints and never writes into the
//! folder it saves.

pub mod manifest;
pub mod push;
pub mod saves;
pub mod state;
pub mod target;
pub mod upload;
pub mod verify;
pub mod walk;

use std::path::PathBuf;

use crate::error::{Classify, ErrorClass};
use crate::storage::StorageError;

pub use manifest::{FileEntry, Manifest, Skipped, MANIFEST_FILE};
pub use push::{push, PushConfig, PushOutcome};
pub use target::{PushTuning, Target};

/// The folder under a worker's prefix that holds its saves.
pub const ARTIFACTS_DIR: &str = "artifacts";

/// A push or a load of artifacts that failed.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactsError {
    /// A request to the store failed, or the store could not be built.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The folder to save is not a folder.
    #[error("`{}` is not a folder", path.display())]
    NotAFolder { path: PathBuf },
    /// A file or folder of the artifacts could not be read.
    #[error("cannot read `{}`: {error}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        error: std::io::Error,
    },
    /// A file kept changing while it was read, every time it was tried.
    #[error("`{}` changed while it was read, {attempts} times in a row", path.display())]
    FileChanging { path: PathBuf, attempts: u32 },
    /// The push state file could not be written.
    #[error("cannot write the push state `{}`: {error}", path.display())]
    State {
        path: PathBuf,
        #[source]
        error: std::io::Error,
    },
    /// A stored save does not match its manifest (or the manifest is unusable).
    #[error("the artifacts save fails its manifest: {reason}")]
    Integrity { save: String, reason: String },
    /// A task that reads or hashes files failed to run.
    #[error("an artifacts task failed: {0}")]
    Task(String),
}

impl Classify for ArtifactsError {
    fn class(&self) -> ErrorClass {
        match self {
            ArtifactsError::Storage(e) => e.class(),
            ArtifactsError::NotAFolder { .. } => ErrorClass::Usage,
            ArtifactsError::Read { .. } | ArtifactsError::State { .. } => ErrorClass::Io,
            ArtifactsError::FileChanging { .. } => ErrorClass::Io,
            ArtifactsError::Integrity { .. } => ErrorClass::Integrity,
            ArtifactsError::Task(_) => ErrorClass::Internal,
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            ArtifactsError::Storage(e) => e.hint(),
            ArtifactsError::NotAFolder { .. } => {
                Some("pass the folder the job writes its model files into".into())
            }
            ArtifactsError::Read { .. } => {
                Some("check that the artifacts folder is readable by this user".into())
            }
            ArtifactsError::FileChanging { .. } => Some(
                "something is still writing this file; push once the writer has finished (nothing was marked complete)"
                    .into(),
            ),
            ArtifactsError::State { .. } => {
                Some("check free space and permissions of --state-dir".into())
            }
            ArtifactsError::Integrity { .. } => Some(
                "the stored objects are not the ones the save's manifest names; push the artifacts again or load another save"
                    .into(),
            ),
            ArtifactsError::Task(_) => None,
        }
    }
}
