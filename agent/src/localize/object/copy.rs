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
//! versions.
//!
//! A caller that checks digests (loading an artifacts save, a `sha256=` fragment) asks for them
//! per file ([`Hashing`]), and they are taken as the bytes stream in, so nothing is read back from
//! disk: the whole object's sha256 when it comes in one request (a split object cannot be hashed
//! in order, and is left to the caller), or the sha256 of each fixed-size part, which any range
//! can take on its own when ranges start on part boundaries (the split is aligned to them).
//! Checking the digests is the caller's job. This module writes only below the stage it is given.

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
/// whole-object request up to [`SPLIT_ABOVE`], else `concurrency` about equal ranges of at least
/// [`MIN_PART_SIZE`], each a multiple of `align` bytes long (but the last). `None` means "the
/// whole object, no Range header". Invariant of the result: it is `[None]`, or two or more
/// ranges that are contiguous, start at 0 and end at `size`, and of which every one but the last
/// ends on a multiple of `align`. (One range is never returned: the caller makes the file at its
/// full length only for ranged requests, so a lone range would have no file to write into.)
pub fn split(size: u64, concurrency: usize, align: u64) -> Vec<Option<std::ops::Range<u64>>> {
    if size <= SPLIT_ABOVE {
        return vec![None];
    }
    let align = align.max(1);
    let part = size.div_ceil(concurrency.max(1) as u64).max(MIN_PART_SIZE);
    let part = part.div_ceil(align).saturating_mul(align);
    let mut ranges = Vec::new();
    let mut start = 0;
    while start < size {
        let end = (start + part).min(size);
        ranges.push(Some(start..end));
        start = end;
    }
    if ranges.len() == 1 {
        // One connection, or an alignment as large as the object, leaves one range: that is
        // the whole object.
        return vec![None];
    }
    ranges
}

/// What to hash of one file as it downloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hashing {
    None,
    /// The whole content, when the file comes in one request.
    Whole,
    /// Each consecutive piece of this many bytes (the last one shorter); the file's ranges are
    /// aligned to them. Invariant: at least 1.
    Parts(u64),
}

/// One file to write. Invariant: `path` lies inside the stage (checked by `keys::plan`).
#[derive(Debug, Clone)]
pub struct Download {
    pub meta: ObjectMeta,
    pub path: PathBuf,
    pub hashing: Hashing,
}

/// The digests taken of one file as it downloaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Digests {
    /// None were asked for, or the file was split and only its whole digest was asked for.
    None,
    Whole([u8; 32]),
    /// One entry per part of [`Hashing::Parts`]; an entry is `None` when no range could take
    /// that part whole (never, with the aligned split; the caller then reads the file back).
    Parts(Vec<Option<[u8; 32]>>),
}

/// One request: a whole object, or one byte range of a large one.
struct Job {
    file: usize,
    range: Option<std::ops::Range<u64>>,
}

/// What one request hashed: the whole object, or parts from the `first`-th on.
enum Taken {
    None,
    Whole([u8; 32]),
    Parts {
        first: usize,
        digests: Vec<[u8; 32]>,
    },
}

/// What [`download_all`] wrote. Invariant: `digests` has one entry per file, in the order given.
#[derive(Debug)]
pub struct Downloaded {
    pub bytes: u64,
    pub digests: Vec<Digests>,
}

/// Downloads every file, hashing each as its [`Download::hashing`] says.
pub async fn download_all(
    store: Arc<dyn ObjectStore>,
    service: Service,
    files: &[Download],
    concurrency: usize,
    progress: &SourceProgress,
) -> Result<Downloaded, ObjectError> {
    let mut jobs = Vec::new();
    let mut digests = Vec::with_capacity(files.len());
    for (index, d) in files.iter().enumerate() {
        let align = match d.hashing {
            Hashing::Parts(n) => n,
            Hashing::None | Hashing::Whole => 1,
        };
        let ranges = split(d.meta.size, concurrency, align);
        if ranges.len() > 1 {
            // Every part job writes at its own offset, so the file must exist at full length first.
            let file = std::fs::File::create(&d.path).map_err(write_error(&d.path))?;
            file.set_len(d.meta.size).map_err(write_error(&d.path))?;
        }
        digests.push(match d.hashing {
            Hashing::Parts(n) => {
                let count = d.meta.size.div_ceil(n.max(1)).max(1);
                Digests::Parts(vec![None; usize::try_from(count).unwrap_or(usize::MAX)])
            }
            Hashing::None | Hashing::Whole => Digests::None,
        });
        jobs.extend(ranges.into_iter().map(|range| Job { file: index, range }));
    }
    let results = futures::stream::iter(jobs)
        .map(|job| {
            let store = store.clone();
            let d = &files[job.file];
            let index = job.file;
            async move {
                let (n, taken) = run_job(store.as_ref(), service, d, job.range, progress).await?;
                Ok::<_, ObjectError>((index, n, taken))
            }
        })
        .buffer_unordered(concurrency.max(1));
    let init = Downloaded { bytes: 0, digests };
    results
        .try_fold(init, |mut done, (index, n, taken)| async move {
            done.bytes += n;
            match (taken, &mut done.digests[index]) {
                (Taken::Whole(d), slot) => *slot = Digests::Whole(d),
                (Taken::Parts { first, digests }, Digests::Parts(all)) => {
                    for (slot, d) in all.iter_mut().skip(first).zip(digests) {
                        *slot = Some(d);
                    }
                }
                _ => {}
            }
            Ok(done)
        })
        .await
}

/// Hashes one request's bytes as [`Hashing`] asks: parts are cut at multiples of the part size
/// counted from the object's start, so the request must start on a part boundary.
enum Hasher {
    None,
    Whole(Sha256),
    Parts {
        size: u64,
        first: usize,
        /// Bytes of the current part hashed so far.
        filled: u64,
        current: Sha256,
        done: Vec<[u8; 32]>,
    },
}

impl Hasher {
    /// The hasher for bytes `range` of an object (`None`: all of it); a range that does not start
    /// on a part boundary gets none (its parts are left to the caller).
    fn new(hashing: Hashing, range: &Option<std::ops::Range<u64>>) -> Hasher {
        let start = range.as_ref().map_or(0, |r| r.start);
        match hashing {
            Hashing::Whole if range.is_none() => Hasher::Whole(Sha256::new()),
            Hashing::Parts(size) if size > 0 && start % size == 0 => Hasher::Parts {
                size,
                first: usize::try_from(start / size).unwrap_or(usize::MAX),
                filled: 0,
                current: Sha256::new(),
                done: Vec::new(),
            },
            _ => Hasher::None,
        }
    }

    fn update(&mut self, mut bytes: &[u8]) {
        match self {
            Hasher::None => {}
            Hasher::Whole(h) => h.update(bytes),
            Hasher::Parts {
                size,
                filled,
                current,
                done,
                ..
            } => {
                while !bytes.is_empty() {
                    let room = usize::try_from(*size - *filled).unwrap_or(usize::MAX);
                    let (now, rest) = bytes.split_at(room.min(bytes.len()));
                    current.update(now);
                    *filled += now.len() as u64;
                    if *filled == *size {
                        done.push(std::mem::take(current).finalize().into());
                        *filled = 0;
                    }
                    bytes = rest;
                }
            }
        }
    }

    /// The digests taken; `at_end` says the request reached the object's end, so a short last
    /// part is the object's last part (elsewhere it would be a piece of a part, and is dropped).
    fn finish(self, at_end: bool) -> Taken {
        match self {
            Hasher::None => Taken::None,
            Hasher::Whole(h) => Taken::Whole(h.finalize().into()),
            Hasher::Parts {
                first,
                filled,
                current,
                mut done,
                ..
            } => {
                // An empty object is one empty part.
                if at_end && (filled > 0 || (first == 0 && done.is_empty())) {
                    done.push(current.finalize().into());
                }
                Taken::Parts {
                    first,
                    digests: done,
                }
            }
        }
    }
}

/// How many bytes a request writes between two writeback hints.
const WRITEBACK_EVERY: u64 = 8 << 20;

async fn run_job(
    store: &dyn ObjectStore,
    service: Service,
    d: &Download,
    range: Option<std::ops::Range<u64>>,
    progress: &SourceProgress,
) -> Result<(u64, Taken), ObjectError> {
    let mut hasher = Hasher::new(d.hashing, &range);
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
    let start = range.as_ref().map_or(0, |r| r.start);
    let mut written = 0u64;
    // The stage is made durable before it is published. Starting writeback as the bytes arrive
    // lets the disk work while the request still streams, so that wait is short: the kernel
    // alone would start only once a tenth of memory is dirty, which a 1 GiB object never reaches.
    let mut written_back = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| request_error(&e))?;
        file.write_all(&chunk).await.map_err(write_error(&d.path))?;
        hasher.update(&chunk);
        written += chunk.len() as u64;
        progress.advance(chunk.len() as u64);
        if written - written_back >= WRITEBACK_EVERY {
            let handle = file.try_clone().await.map_err(write_error(&d.path))?;
            let (handle, from) = (handle.into_std().await, start + written_back);
            let len = written - written_back;
            tokio::task::spawn_blocking(move || crate::fsutil::start_writeback(&handle, from, len));
            written_back = written;
        }
    }
    file.flush().await.map_err(write_error(&d.path))?;
    // The whole range again: bytes still in tokio's buffer at the last window were not on the
    // page cache yet, and pages already under writeback cost nothing.
    let file = file.into_std().await;
    tokio::task::spawn_blocking(move || crate::fsutil::start_writeback(&file, start, written));
    let at_end = range.as_ref().is_none_or(|r| r.end == d.meta.size);
    let expected = range.map_or(d.meta.size, |r| r.end - r.start);
    if written != expected {
        // The listing promised a size; a shorter body means the object changed or was cut off.
        return Err(ObjectError::ShortBody {
            key,
            expected,
            got: written,
        });
    }
    Ok((written, hasher.finish(at_end)))
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
        assert_eq!(split(0, 8, 1), vec![None]);
        assert_eq!(split(SPLIT_ABOVE, 8, 1), vec![None]);
    }

    #[test]
    fn a_large_object_is_cut_into_one_range_per_connection() {
        let size = (1 << 30) + 4096;
        let ranges = split(size, 8, 1);
        assert_eq!(ranges.len(), 8);
        assert!(covers(&ranges, size));
    }

    #[test]
    fn ranges_never_shrink_below_the_minimum() {
        let size = SPLIT_ABOVE + 1;
        let ranges = split(size, 64, 1);
        assert_eq!(ranges.len(), 3, "{ranges:?}");
        assert!(covers(&ranges, size));
        assert!(ranges[..2]
            .iter()
            .flatten()
            .all(|r| r.end - r.start == MIN_PART_SIZE));
    }

    #[test]
    fn one_connection_or_one_range_is_one_request_without_a_range() {
        // A concurrency of 0 is taken as 1, never as a zero divisor.
        for concurrency in [0, 1] {
            assert_eq!(split(100 << 20, concurrency, 1), vec![None]);
        }
        // A part larger than the object leaves one piece; a huge one does not overflow.
        assert_eq!(split(40 << 20, 8, 64 << 20), vec![None]);
        assert_eq!(split(40 << 20, 8, u64::MAX), vec![None]);
    }

    #[test]
    fn ranges_end_on_part_boundaries() {
        let part = 5 << 20;
        for size in [(1u64 << 30) + 4096, 100 << 20, (40 << 20) + 1] {
            let ranges = split(size, 8, part);
            assert!(covers(&ranges, size), "{size}: {ranges:?}");
            for r in ranges.iter().flatten().filter(|r| r.end != size) {
                assert_eq!(r.end % part, 0, "{size}: {ranges:?}");
            }
        }
    }

    /// The part digests of `body` taken by requests over `ranges`, fed in uneven chunks.
    fn take_parts(body: &[u8], part: u64, ranges: &[Option<std::ops::Range<u64>>]) -> Digests {
        let count = (body.len() as u64).div_ceil(part).max(1) as usize;
        let mut all = vec![None; count];
        for range in ranges {
            let mut h = Hasher::new(Hashing::Parts(part), range);
            let r = range.clone().unwrap_or(0..body.len() as u64);
            for chunk in body[r.start as usize..r.end as usize].chunks(7777) {
                h.update(chunk);
            }
            if let Taken::Parts { first, digests } = h.finish(r.end == body.len() as u64) {
                for (slot, d) in all.iter_mut().skip(first).zip(digests) {
                    *slot = Some(d);
                }
            }
        }
        Digests::Parts(all)
    }

    #[test]
    fn each_range_hashes_the_parts_it_holds() {
        let part = 1u64 << 20;
        let body: Vec<u8> = (0..(17 << 20) + 99).map(|i| (i % 251) as u8).collect();
        let expected = Digests::Parts(
            body.chunks(part as usize)
                .map(|c| Some(Sha256::digest(c).into()))
                .collect(),
        );
        let size = body.len() as u64;
        let aligned = vec![
            Some(0..3 * part),
            Some(3 * part..8 * part),
            Some(8 * part..size),
        ];
        assert_eq!(take_parts(&body, part, &aligned), expected);
        assert_eq!(take_parts(&body, part, &[None]), expected);
        // A range that starts inside a part takes nothing, and one that ends inside a part
        // drops that piece: those parts are left unknown, never given a wrong digest.
        let unaligned = vec![Some(0..part + 5), Some(part + 5..size)];
        let Digests::Parts(got) = take_parts(&body, part, &unaligned) else {
            unreachable!()
        };
        let Digests::Parts(want) = &expected else {
            unreachable!()
        };
        assert_eq!(got[0], want[0]);
        assert!(got[1..].iter().all(Option::is_none), "{:?}", &got[..3]);
        // An empty object is one empty part.
        assert_eq!(
            take_parts(&[], part, &[None]),
            Digests::Parts(vec![Some(Sha256::digest([]).into())])
        );
    }
}
