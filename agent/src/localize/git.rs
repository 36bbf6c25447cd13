//! Git sources (stub: to be written).

use std::path::Path;

use super::{FetchContext, Fetched, SourceError, SourceOptions, SourceProgress};
use crate::error::{Classify, ErrorClass};

/// A git failure.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("git sources are not implemented yet")]
    Unimplemented,
}

impl Classify for GitError {
    fn class(&self) -> ErrorClass {
        ErrorClass::Internal
    }
}

/// The commit the source's ref points at now, without fetching objects.
pub async fn probe(
    _url: &str,
    _opts: &SourceOptions,
    _ctx: &FetchContext,
) -> Result<Option<String>, SourceError> {
    Ok(None)
}

/// Clones the source into `stage` and checks out the ref.
pub async fn fetch(
    _url: &str,
    _opts: &SourceOptions,
    _stage: &Path,
    _ctx: &FetchContext,
    _progress: &SourceProgress,
) -> Result<Fetched, SourceError> {
    Err(GitError::Unimplemented.into())
}
