//! A single archive object, streamed into the unpacker while it downloads.
//!
//! The object's body is bridged into a blocking reader for [`unpack::unpack`] (which owns every
//! safety rule for entries); tar and tar.gz never touch the disk as a whole, and the bytes are
//! hashed on the way for `#sha256=` and the recorded revision. This module only wires the two
//! together: it never writes files itself.

use std::path::Path as FsPath;
use std::sync::{Arc, Mutex};

use futures::TryStreamExt;
use object_store::{ObjectMeta, ObjectStoreExt};
use tokio_util::io::{StreamReader, SyncIoBridge};

use super::{Located, ObjectError};
use crate::localize::unpack::{self, HashingReader, UnpackError, UnpackOptions};
use crate::localize::{ArchiveFormat, FetchContext, SourceError, SourceOptions, SourceProgress};
use crate::storage::StorageError;

/// What unpacking an archive object produced.
#[derive(Debug)]
pub struct Unpacked {
    /// Hex sha256 of the archive's bytes.
    pub sha256: String,
    pub bytes: u64,
    pub files: u64,
}

/// Streams the archive object into the unpacker, writing into `stage`, and checks `#sha256=`.
pub async fn fetch(
    at: &Located,
    meta: &ObjectMeta,
    format: ArchiveFormat,
    opts: &SourceOptions,
    stage: &FsPath,
    ctx: &FetchContext,
    progress: &SourceProgress,
) -> Result<Unpacked, SourceError> {
    let key = meta.location.to_string();
    let request_error = |e: &object_store::Error| StorageError::request(at.service, key.clone(), e);
    let body = at
        .store
        .get(&meta.location)
        .await
        .map_err(|e| ObjectError::from(request_error(&e)))?
        .into_stream();
    progress.set_total(meta.size);
    // The unpacker only sees an io::Error; the store's own error is kept to report its real class
    // (a 403 mid-way is an auth failure, not damage).
    let failure: Arc<Mutex<Option<StorageError>>> = Arc::default();
    let seen = failure.clone();
    let (service, what) = (at.service, key.clone());
    let body = body.map_err(move |e| {
        if let Ok(mut slot) = seen.lock() {
            slot.get_or_insert(StorageError::request(service, what.clone(), &e));
        }
        std::io::Error::other(crate::storage::scrub(&e.to_string()))
    });
    let reader = SyncIoBridge::new(StreamReader::new(body));
    let file_name = meta.location.filename().unwrap_or_default().to_string();
    let unpack_opts = UnpackOptions::new(file_name, opts, ctx.limits);
    let dest = stage.to_path_buf();
    let unpack_progress = progress.clone();
    let unpacked = tokio::task::spawn_blocking(move || {
        let mut reader = HashingReader::new(reader);
        let stats = unpack::unpack(
            &mut reader,
            Some(format),
            &dest,
            &unpack_opts,
            &unpack_progress,
        )?;
        let digest = reader.finish().map_err(UnpackError::Read)?;
        Ok::<_, UnpackError>((stats, digest))
    })
    .await
    .map_err(|e| UnpackError::Io {
        action: "unpack task failed for",
        path: stage.to_path_buf(),
        error: std::io::Error::other(e.to_string()),
    })?;
    let (stats, digest) = match unpacked {
        Ok(done) => done,
        Err(UnpackError::Read(io)) => {
            let stored = failure.lock().ok().and_then(|mut slot| slot.take());
            return Err(match stored {
                Some(e) => ObjectError::from(e).into(),
                None => UnpackError::Read(io).into(),
            });
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(expected) = opts.sha256 {
        if expected != digest.sha256 {
            return Err(SourceError::Checksum {
                expected: hex::encode(expected),
                actual: digest.hex(),
            });
        }
    }
    tracing::debug!(format = ?stats.format, bytes = digest.bytes, "archive object unpacked");
    Ok(Unpacked {
        sha256: digest.hex(),
        bytes: stats.bytes,
        files: stats.files,
    })
}
