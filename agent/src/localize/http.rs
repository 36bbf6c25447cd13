//! HTTP archive sources (stub: to be written).

use std::path::Path;

use super::{FetchContext, Fetched, SourceError, SourceOptions, SourceProgress};
use crate::error::{Classify, ErrorClass};

/// An HTTP failure.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("HTTP sources are not implemented yet")]
    Unimplemented,
}

impl Classify for HttpError {
    fn class(&self) -> ErrorClass {
        ErrorClass::Internal
    }
}

/// The ETag of the file now, without downloading it.
pub async fn probe(
    _url: &url::Url,
    _opts: &SourceOptions,
    _ctx: &FetchContext,
) -> Result<Option<String>, SourceError> {
    Ok(None)
}

/// Downloads the file into `stage`, unpacking it while it streams.
pub async fn fetch(
    _url: &url::Url,
    _opts: &SourceOptions,
    _stage: &Path,
    _ctx: &FetchContext,
    _progress: &SourceProgress,
) -> Result<Fetched, SourceError> {
    Err(HttpError::Unimplemented.into())
}
