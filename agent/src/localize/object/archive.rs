//! A single archive object, streamed into the unpacker while it downloads.
//!
//! Waits on the unpacker's API (`localize::unpack`, written on the `archive` branch).

use std::path::Path as FsPath;

use object_store::ObjectMeta;

use super::{Located, ObjectError};
use crate::localize::{ArchiveFormat, FetchContext, SourceError, SourceOptions, SourceProgress};

/// What unpacking an archive object produced.
#[derive(Debug)]
pub struct Unpacked {
    /// Hex sha256 of the archive's bytes.
    pub sha256: String,
    pub bytes: u64,
    pub files: u64,
}

/// Streams the archive object into the unpacker, writing into `stage`.
pub async fn fetch(
    _at: &Located,
    _meta: &ObjectMeta,
    _format: ArchiveFormat,
    _opts: &SourceOptions,
    _stage: &FsPath,
    _ctx: &FetchContext,
    _progress: &SourceProgress,
) -> Result<Unpacked, SourceError> {
    Err(ObjectError::Storage(crate::storage::StorageError::BadUrl {
        shown: String::new(),
        reason: "archive objects need the unpacker, which is not merged yet".into(),
    })
    .into())
}
