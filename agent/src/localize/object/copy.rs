//! Downloads planned objects into the stage: many objects at once, and large objects in parallel
//! byte ranges, never more than `concurrency` requests in flight for one source.
//!
//! Every object becomes a list of jobs (one for a small object, one per part for a large one);
//! all jobs of a source share one bounded stream, so a prefix of many small files and a single
//! huge object both keep the same number of connections busy. A large object is cut into about
//! one part per connection (never under [`MIN_PART_SIZE`]), not into many small ranges: every
//! request costs the server a lookup and some servers a pass over the whole object, and each part
//! is written as it streams in, so a bigger part costs no memory. Parts of one object are fetched
//! with `If-Match` on its ETag, so an object replaced mid-download fails instead of mixing two
//! versions. When asked, an object fetched in one request is hashed (sha256) as it streams in, so
//! a caller that checks digests (loading an artifacts save) need not read it back from disk; a
//! split object cannot be hashed in order and is left to the caller. This module writes only below
//! the stage it is given.

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use object_store::{GetOptions, GetRange, ObjectMeta, ObjectStore};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

use super::ObjectError;
use crate::localize::SourceProgress;
use crate::storage::{Service, StorageError};

/// Objects larger than this are fetched in parallel ranges.
pub const SPLIT_ABOVE: u64 = 16 << 20;
/// The smallest ranged request; below this, a request's own cost outweighs the parallelism.
pub const MIN_PART_SIZE: u64 = 8 << 20;

/// The byte ranges one object of `size` bytes is fetched in with `concurrency` connections: one
/// whole-object request up to [`SPLIT_ABOVE`], else `concurrency` equal ranges of at least
/// [`MIN_PART_SIZE`]. `None` means "the whole object, no Range header". Invariant of the result:
/// the ranges are contiguous, start at 0 and end at `size`.
pub fn split(size: u64, concurrency: usize) -> Vec<Option<std::ops::Range<u64>>> {
    if size <= SPLIT_ABOVE {
        return vec![None];
    }
    let part = size.div_ceil(concurrency.max(1) as u64).max(MIN_PART_SIZE);
    let mut ranges = Vec::new();
    let mut start = 0;
    while start < size {
        let end = (start + part).min(size);
        ranges.push(Some(start..end));
        start = end;
    }
    ranges
}

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

/// What [`download_all`] wrote. Invariant: `sha256` has one entry per file, in the order given;
/// an entry is `Some` only when hashing was asked for and the file came in one request.
#[derive(Debug)]
pub struct Downloaded {
    pub bytes: u64,
    pub sha256: Vec<Option<[u8; 32]>>,
}

/// Downloads every file, hashing those fetched in one request when `hash` is set.
pub async fn download_all(
    store: Arc<dyn ObjectStore>,
    service: Service,
    files: &[Download],
    concurrency: usize,
    hash: bool,
    progress: &SourceProgress,
) -> Result<Downloaded, ObjectError> {
    let mut jobs = Vec::new();
    for (index, d) in files.iter().enumerate() {
        let ranges = split(d.meta.size, concurrency);
        if ranges.len() > 1 {
            // Every part job writes at its own offset, so the file must exist at full length first.
            let file = std::fs::File::create(&d.path).map_err(write_error(&d.path))?;
            file.set_len(d.meta.size).map_err(write_error(&d.path))?;
        }
        jobs.extend(ranges.into_iter().map(|range| Job { file: index, range }));
    }
    let results = futures::stream::iter(jobs)
        .map(|job| {
            let store = store.clone();
            let d = &files[job.file];
            let index = job.file;
            async move {
                let hasher = (hash && job.range.is_none()).then(Sha256::new);
                let (n, digest) =
                    run_job(store.as_ref(), service, d, job.range, hasher, progress).await?;
                Ok::<_, ObjectError>((index, n, digest))
            }
        })
        .buffer_unordered(concurrency.max(1));
    let init = Downloaded {
        bytes: 0,
        sha256: vec![None; files.len()],
    };
    results
        .try_fold(init, |mut done, (index, n, digest)| async move {
            done.bytes += n;
            if let Some(d) = digest {
                done.sha256[index] = Some(d);
            }
            Ok(done)
        })
        .await
}

async fn run_job(
    store: &dyn ObjectStore,
    service: Service,
    d: &Download,
    range: Option<std::ops::Range<u64>>,
    mut hasher: Option<Sha256>,
    progress: &SourceProgress,
) -> Result<(u64, Option<[u8; 32]>), ObjectError> {
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
        if let Some(h) = hasher.as_mut() {
            h.update(&chunk);
        }
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
    Ok((written, hasher.map(|h| h.finalize().into())))
}

/// Maps an IO error on a stage file.
pub fn write_error(path: &FsPath) -> impl Fn(std::io::Error) -> ObjectError + '_ {
    move |error| ObjectError::Write {
        path: path.to_path_buf(),
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covers(ranges: &[Option<std::ops::Range<u64>>], size: u64) -> bool {
        let mut at = 0;
        for r in ranges {
            let r = r.clone().expect("a split object has only ranged parts");
            if r.start != at || r.end <= r.start {
                return false;
            }
            at = r.end;
        }
        at == size
    }

    #[test]
    fn a_small_object_is_one_request_without_a_range() {
        assert_eq!(split(0, 8), vec![None]);
        assert_eq!(split(SPLIT_ABOVE, 8), vec![None]);
    }

    #[test]
    fn a_large_object_is_cut_into_one_range_per_connection() {
        let size = (1 << 30) + 4096;
        let ranges = split(size, 8);
        assert_eq!(ranges.len(), 8);
        assert!(covers(&ranges, size));
    }

    #[test]
    fn ranges_never_shrink_below_the_minimum() {
        let size = SPLIT_ABOVE + 1;
        let ranges = split(size, 64);
        assert_eq!(ranges.len(), 3, "{ranges:?}");
        assert!(covers(&ranges, size));
        assert!(ranges[..2]
            .iter()
            .flatten()
            .all(|r| r.end - r.start == MIN_PART_SIZE));
        // A concurrency of 0 is taken as 1, never as a zero divisor.
        assert!(covers(&split(100 << 20, 0), 100 << 20));
    }
}
