//! Downloads planned objects into the stage: many objects at once, and large objects in parallel
//! byte ranges, never more than `concurrency` requests in flight for one source.
//!
//! Every object becomes a list of jobs (one for a small object, one per part for a large one);
//! all jobs of a source share one bounded stream, so a prefix of many small files and a single
//! huge object both keep the same number of connections busy. Parts of one object are fetched
//! with `If-Match` on its ETag, so an object replaced mid-download fails instead of mixing two
//! versions. This module writes only below the stage it is given.

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use object_store::{GetOptions, GetRange, ObjectMeta, ObjectStore};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

use super::ObjectError;
use crate::localize::SourceProgress;
use crate::storage::{Service, StorageError};

/// Objects larger than this are fetched in parts of [`PART_SIZE`].
pub const SPLIT_ABOVE: u64 = 16 << 20;
/// The size of one ranged request.
pub const PART_SIZE: u64 = 8 << 20;

/// One file to write. Invariant: `path` lies inside the stage (checked by `keys::plan`).
#[derive(Debug, Clone)]
pub struct Download {
    pub meta: ObjectMeta,
    pub path: PathBuf,
}

/// One request: a whole object, or one byte range of a large one.
struct Job {
    file: usize,
    range: Option<std::ops::Range<u64>>,
}

/// Downloads every file; returns the bytes written.
pub async fn download_all(
    store: Arc<dyn ObjectStore>,
    service: Service,
    files: &[Download],
    concurrency: usize,
    progress: &SourceProgress,
) -> Result<u64, ObjectError> {
    let mut jobs = Vec::new();
    for (index, d) in files.iter().enumerate() {
        if d.meta.size > SPLIT_ABOVE {
            // Every part job writes at its own offset, so the file must exist at full length first.
            let file = std::fs::File::create(&d.path).map_err(write_error(&d.path))?;
            file.set_len(d.meta.size).map_err(write_error(&d.path))?;
            let mut start = 0;
            while start < d.meta.size {
                let end = (start + PART_SIZE).min(d.meta.size);
                jobs.push(Job {
                    file: index,
                    range: Some(start..end),
                });
                start = end;
            }
        } else {
            jobs.push(Job {
                file: index,
                range: None,
            });
        }
    }
    let results = futures::stream::iter(jobs)
        .map(|job| {
            let store = store.clone();
            let d = &files[job.file];
            async move { run_job(store.as_ref(), service, d, job.range, progress).await }
        })
        .buffer_unordered(concurrency.max(1));
    results
        .try_fold(0u64, |sum, n| async move { Ok(sum + n) })
        .await
}

async fn run_job(
    store: &dyn ObjectStore,
    service: Service,
    d: &Download,
    range: Option<std::ops::Range<u64>>,
    progress: &SourceProgress,
) -> Result<u64, ObjectError> {
    let key = d.meta.location.to_string();
    let request_error = |e: &object_store::Error| StorageError::request(service, key.clone(), e);
    let mut options = GetOptions::default();
    let mut file = match &range {
        Some(r) => {
            options.range = Some(GetRange::Bounded(r.clone()));
            options.if_match = d.meta.e_tag.clone();
            let mut f = tokio::fs::OpenOptions::new()
                .write(true)
                .open(&d.path)
                .await
                .map_err(write_error(&d.path))?;
            f.seek(std::io::SeekFrom::Start(r.start))
                .await
                .map_err(write_error(&d.path))?;
            f
        }
        None => tokio::fs::File::create(&d.path)
            .await
            .map_err(write_error(&d.path))?,
    };
    let result = store
        .get_opts(&d.meta.location, options)
        .await
        .map_err(|e| request_error(&e))?;
    let mut body = result.into_stream();
    let mut written = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| request_error(&e))?;
        file.write_all(&chunk).await.map_err(write_error(&d.path))?;
        written += chunk.len() as u64;
        progress.advance(chunk.len() as u64);
    }
    file.flush().await.map_err(write_error(&d.path))?;
    let expected = range.map_or(d.meta.size, |r| r.end - r.start);
    if written != expected {
        // The listing promised a size; a shorter body means the object changed or was cut off.
        return Err(ObjectError::ShortBody {
            key,
            expected,
            got: written,
        });
    }
    Ok(written)
}

/// Maps an IO error on a stage file.
pub fn write_error(path: &FsPath) -> impl Fn(std::io::Error) -> ObjectError + '_ {
    move |error| ObjectError::Write {
        path: path.to_path_buf(),
        error,
    }
}
