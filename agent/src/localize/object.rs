//! Object store sources (stub: to be written).

use std::path::Path;

use super::{FetchContext, Fetched, SourceError, SourceOptions, SourceProgress};
use crate::error::{Classify, ErrorClass};

/// An object store failure.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error("object store sources are not implemented yet")]
    Unimplemented,
}

impl Classify for ObjectError {
    fn class(&self) -> ErrorClass {
        ErrorClass::Internal
    }
}

/// A digest of the ETags of what would be copied, without copying it.
pub async fn probe(
    _url: &url::Url,
    _opts: &SourceOptions,
    _ctx: &FetchContext,
) -> Result<Option<String>, SourceError> {
    Ok(None)
}

/// Copies the object or prefix into `stage`; an archive key is unpacked.
pub async fn fetch(
    _url: &url::Url,
    _opts: &SourceOptions,
    _stage: &Path,
    _ctx: &FetchContext,
    _progress: &SourceProgress,
) -> Result<Fetched, SourceError> {
    Err(ObjectError::Unimplemented.into())
}
