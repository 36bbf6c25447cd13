//! Downloads planned objects into the stage: many objects at once, and large objects in parallel
//! byte ranges, never more than `concurrency` requests in flight for one source.
//!
//! Every object starts as one request. A large one's request is a lead ([`split`]): once it has
//! measured the server, it may stop at a cut and queue helper ranges for the rest, about one per
//! connection and never under [`split::MIN_PART_SIZE`], not many small ranges, since every
//! request costs the server a lookup and some servers a pass over the whole object. All requests
//! of a source share one queue, helpers first, so a prefix of many small files and a single huge
//! object both keep the same number of connections busy. Each request writes at its own offset
//! as it streams, so a bigger range costs no memory. Every request of a large object carries
//! `If-Match` with its ETag, so an object replaced mid-download fails instead of mixing two
//! versions.
//!
//! A caller that checks digests (loading an artifacts save, a `sha256=` fragment) asks for them
//! per file ([`Hashing`]), and they are taken as the bytes stream in, so nothing is read back from
//! disk: the whole object's sha256 when it comes in one request (a split object cannot be hashed
//! in order, and is left to the caller), or the sha256 of each fixed-size part, which any range
//! can take on its own when ranges start on part boundaries (cuts are aligned to them).
//! Checking the digests is the caller's job (loading a save, localize). This module writes only
//! the files it is given, and reports bytes through a callback, never printing.

use std::collections::VecDeque;
use std::ops::Range;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use object_store::{GetOptions, GetRange, ObjectMeta, ObjectStore};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::error::StorageError;
use super::service::Service;
use super::split::{self, Pace};
use crate::error::{Classify, ErrorClass};

/// Called with the bytes each response delivers, as they arrive (a progress display).
pub type Progress<'a> = &'a (dyn Fn(u64) + Sync);

/// A download that failed.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// A request failed (or the object changed: `If-Match`).
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A body ended before the size the store announced.
    #[error("object `{key}` ended after {got} of {expected} bytes")]
    ShortBody {
        key: String,
        expected: u64,
        got: u64,
    },
    /// Writing a downloaded file failed.
    #[error("cannot write `{}`: {error}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        error: std::io::Error,
    },
}

impl Classify for DownloadError {
    fn class(&self) -> ErrorClass {
        match self {
            DownloadError::Storage(e) => e.class(),
            DownloadError::ShortBody { .. } => ErrorClass::Network,
            DownloadError::Write { .. } => ErrorClass::Io,
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            DownloadError::Storage(e) => e.hint(),
            DownloadError::ShortBody { .. } => {
                Some("the object may have changed while it was copied; run again".into())
            }
            DownloadError::Write { .. } => {
                Some("check that the destination is writable and has free space".into())
            }
        }
    }
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

/// One request. Invariant: a `Lead` or `Range` file was made at its full length before the
/// request starts, since they write at offsets (or may come to).
#[derive(Debug, Clone)]
enum Job {
    /// A small object, or one that cannot be split: all of it, no Range header.
    Whole { file: usize },
    /// A large object, asked for whole; it may stop at a cut and queue helpers ([`split::rest`]).
    Lead { file: usize },
    /// A helper: one byte range of a large object, from a part boundary.
    Range { file: usize, range: Range<u64> },
}

impl Job {
    fn file(&self) -> usize {
        match self {
            Job::Whole { file } | Job::Lead { file } | Job::Range { file, .. } => *file,
        }
    }
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

/// The part size ranges of a file must be aligned to: its hashing parts, else none.
fn alignment(d: &Download) -> u64 {
    match d.hashing {
        Hashing::Parts(n) => n.max(1),
        Hashing::None | Hashing::Whole => 1,
    }
}

/// When a lead decides and what: [`split::MEASURE_FOR`] and [`split::rest`], except in tests
/// that need one path taken for certain.
#[derive(Clone, Copy)]
struct Policy {
    measure_for: Duration,
    rest: fn(u64, Pace, usize, u64) -> Option<split::Rest>,
}

const POLICY: Policy = Policy {
    measure_for: split::MEASURE_FOR,
    rest: split::rest,
};

/// Downloads every file, hashing each as its [`Download::hashing`] says.
pub async fn download_all(
    store: Arc<dyn ObjectStore>,
    service: Service,
    files: &[Download],
    concurrency: usize,
    progress: Progress<'_>,
) -> Result<Downloaded, DownloadError> {
    download_with(store, service, files, concurrency, progress, POLICY).await
}

async fn download_with(
    store: Arc<dyn ObjectStore>,
    service: Service,
    files: &[Download],
    concurrency: usize,
    progress: Progress<'_>,
    policy: Policy,
) -> Result<Downloaded, DownloadError> {
    let concurrency = concurrency.max(1);
    let mut queue = VecDeque::new();
    let mut digests = Vec::with_capacity(files.len());
    for (index, d) in files.iter().enumerate() {
        if split::splittable(d.meta.size, concurrency, alignment(d)) {
            // A lead may hand its tail to helpers that write at their own offsets, so the file
            // must exist at full length first.
            let file = std::fs::File::create(&d.path).map_err(write_error(&d.path))?;
            file.set_len(d.meta.size).map_err(write_error(&d.path))?;
            queue.push_back(Job::Lead { file: index });
        } else {
            queue.push_back(Job::Whole { file: index });
        }
        digests.push(match d.hashing {
            Hashing::Parts(n) => {
                let count = d.meta.size.div_ceil(n.max(1)).max(1);
                Digests::Parts(vec![None; usize::try_from(count).unwrap_or(usize::MAX)])
            }
            Hashing::None | Hashing::Whole => Digests::None,
        });
    }
    // Helpers go ahead of everything queued: their object is already under way.
    let mut urgent = VecDeque::new();
    let (helpers_tx, mut helpers_rx) = mpsc::unbounded_channel::<Vec<Job>>();
    let start = |job: Job| {
        let (store, helpers) = (store.clone(), helpers_tx.clone());
        let d = &files[job.file()];
        async move {
            let index = job.file();
            let request = Request {
                store: store.as_ref(),
                index,
                service,
                d,
                concurrency,
                progress,
                policy,
            };
            let (n, taken) = request.run(job, &helpers).await?;
            Ok::<_, DownloadError>((index, n, taken))
        }
    };
    let mut running = FuturesUnordered::new();
    // Bytes written per file, to check at the end that cuts and helpers left no hole.
    let mut written = vec![0u64; files.len()];
    loop {
        // A lead queues its helpers before it can finish, so once it has finished they are
        // here: the queue is never seen empty while a file still has ranges to come.
        while let Ok(helpers) = helpers_rx.try_recv() {
            urgent.extend(helpers);
        }
        while running.len() < concurrency {
            let Some(job) = urgent.pop_front().or_else(|| queue.pop_front()) else {
                break;
            };
            running.push(start(job));
        }
        if running.is_empty() {
            break;
        }
        tokio::select! {
            finished = running.next() => {
                let Some(finished) = finished else { continue };
                let (index, n, taken) = finished?;
                written[index] += n;
                match (taken, &mut digests[index]) {
                    (Taken::Whole(d), slot) => *slot = Digests::Whole(d),
                    (Taken::Parts { first, digests }, Digests::Parts(all)) => {
                        for (slot, d) in all.iter_mut().skip(first).zip(digests) {
                            *slot = Some(d);
                        }
                    }
                    _ => {}
                }
            }
            Some(helpers) = helpers_rx.recv() => urgent.extend(helpers),
        }
    }
    for (d, written) in files.iter().zip(&written) {
        if *written != d.meta.size {
            return Err(DownloadError::ShortBody {
                key: d.meta.location.to_string(),
                expected: d.meta.size,
                got: *written,
            });
        }
    }
    Ok(Downloaded {
        bytes: written.iter().sum(),
        digests,
    })
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
    fn new(hashing: Hashing, range: &Option<Range<u64>>) -> Hasher {
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
    /// part is the object's last part (elsewhere it would be a piece of a part, and is dropped),
    /// and a whole digest is the object's (a lead that stopped at a cut has only a prefix).
    fn finish(self, at_end: bool) -> Taken {
        match self {
            Hasher::None => Taken::None,
            Hasher::Whole(h) if at_end => Taken::Whole(h.finalize().into()),
            Hasher::Whole(_) => Taken::None,
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

/// What every request of one [`download_all`] shares.
struct Request<'a> {
    store: &'a dyn ObjectStore,
    /// The file's index in [`download_all`]'s list, which helper jobs name.
    index: usize,
    service: Service,
    d: &'a Download,
    concurrency: usize,
    progress: Progress<'a>,
    policy: Policy,
}

impl Request<'_> {
    /// Fetches what `job` asks for into the file; a lead sends the helpers it queues on
    /// `helpers`. Returns the bytes written and the digests taken.
    async fn run(
        &self,
        job: Job,
        helpers: &mpsc::UnboundedSender<Vec<Job>>,
    ) -> Result<(u64, Taken), DownloadError> {
        let d = self.d;
        let size = d.meta.size;
        let key = d.meta.location.to_string();
        let request_error =
            |e: &object_store::Error| StorageError::request(self.service, key.clone(), e);
        let (range, lead) = match &job {
            Job::Whole { .. } => (None, false),
            Job::Lead { .. } => (None, true),
            Job::Range { range, .. } => (Some(range.clone()), false),
        };
        let start = range.as_ref().map_or(0, |r| r.start);
        let mut end = range.as_ref().map_or(size, |r| r.end);
        let mut hasher = Hasher::new(d.hashing, &range);
        let mut options = GetOptions::default();
        let mut file = if let Job::Whole { .. } = job {
            tokio::fs::File::create(&d.path)
                .await
                .map_err(write_error(&d.path))?
        } else {
            options.range = range.clone().map(GetRange::Bounded);
            options.if_match = d.meta.e_tag.clone();
            let mut f = tokio::fs::OpenOptions::new()
                .write(true)
                .open(&d.path)
                .await
                .map_err(write_error(&d.path))?;
            f.seek(std::io::SeekFrom::Start(start))
                .await
                .map_err(write_error(&d.path))?;
            f
        };
        let asked = Instant::now();
        let result = self
            .store
            .get_opts(&d.meta.location, options)
            .await
            .map_err(|e| request_error(&e))?;
        let mut body = result.into_stream();
        let mut written = 0u64;
        // The stage is made durable before it is published. Starting writeback as the bytes
        // arrive lets the disk work while the request still streams, so that wait is short: the
        // kernel alone would start only once a tenth of memory is dirty, which a 1 GiB object
        // never reaches.
        let mut written_back = 0u64;
        // A lead measures from its first byte (when it came, and the wait for it), then decides
        // once: `measuring` is set at the first chunk and taken by the decision.
        let mut undecided = lead;
        let mut measuring: Option<(Instant, Duration)> = None;
        loop {
            let chunk = match measuring {
                Some((at, wait)) => tokio::select! {
                    // The deadline first: a body that always has a chunk ready must not put
                    // the decision off.
                    biased;
                    () = tokio::time::sleep_until((at + self.policy.measure_for).into()) => {
                        measuring = None;
                        if let Some(cut) = self.decide(at, wait, written, helpers) {
                            end = cut;
                        }
                        if start + written >= end {
                            break;
                        }
                        continue;
                    }
                    chunk = body.next() => chunk,
                },
                None => body.next().await,
            };
            let Some(chunk) = chunk else { break };
            let chunk = chunk.map_err(|e| request_error(&e))?;
            if undecided {
                undecided = false;
                measuring = Some((Instant::now(), asked.elapsed()));
            }
            // A lead that handed its tail to helpers keeps only what lies before the cut.
            let room = usize::try_from(end - (start + written)).unwrap_or(usize::MAX);
            let chunk = &chunk[..room.min(chunk.len())];
            file.write_all(chunk).await.map_err(write_error(&d.path))?;
            hasher.update(chunk);
            written += chunk.len() as u64;
            (self.progress)(chunk.len() as u64);
            if written - written_back >= WRITEBACK_EVERY {
                let handle = file.try_clone().await.map_err(write_error(&d.path))?;
                let (handle, from) = (handle.into_std().await, start + written_back);
                let len = written - written_back;
                tokio::task::spawn_blocking(move || {
                    crate::fsutil::start_writeback(&handle, from, len)
                });
                written_back = written;
            }
            if start + written >= end {
                // Reached the cut (or the end): the rest of the body belongs to helpers, and
                // dropping it closes the connection.
                break;
            }
        }
        file.flush().await.map_err(write_error(&d.path))?;
        // The whole range again: bytes still in tokio's buffer at the last window were not on
        // the page cache yet, and pages already under writeback cost nothing.
        let file = file.into_std().await;
        tokio::task::spawn_blocking(move || crate::fsutil::start_writeback(&file, start, written));
        let expected = end - start;
        if written != expected {
            // The listing promised a size; a shorter body means the object changed or was cut
            // off.
            return Err(DownloadError::ShortBody {
                key,
                expected,
                got: written,
            });
        }
        Ok((written, hasher.finish(end == size)))
    }

    /// A lead's one decision, [`Policy::measure_for`] past its first byte, which came at `at`
    /// after a `wait`: queues helpers for the rest and returns the cut, or `None` to go on
    /// alone.
    fn decide(
        &self,
        at: Instant,
        wait: Duration,
        received: u64,
        helpers: &mpsc::UnboundedSender<Vec<Job>>,
    ) -> Option<u64> {
        let pace = Pace {
            first_byte: wait,
            streaming: at.elapsed(),
            received,
        };
        let key = self.d.meta.location.as_ref();
        let Some(split::Rest {
            cut,
            helpers: ranges,
        }) = (self.policy.rest)(self.d.meta.size, pace, self.concurrency, alignment(self.d))
        else {
            tracing::debug!(key, ?pace, "one request fetches the whole object");
            return None;
        };
        tracing::debug!(
            key,
            ?pace,
            cut,
            helpers = ranges.len(),
            "splitting the rest"
        );
        let jobs = ranges
            .into_iter()
            .map(|range| Job::Range {
                file: self.index,
                range,
            })
            .collect();
        // The receiver lives as long as download_all, which polls this request.
        helpers.send(jobs).ok()?;
        Some(cut)
    }
}

/// Maps an IO error on a downloaded file.
pub fn write_error(path: &FsPath) -> impl Fn(std::io::Error) -> DownloadError + '_ {
    move |error| DownloadError::Write {
        path: path.to_path_buf(),
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The part digests of `body` taken by requests over `ranges`, fed in uneven chunks.
    fn take_parts(body: &[u8], part: u64, ranges: &[Option<Range<u64>>]) -> Digests {
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

    /// A lead that always cuts right after its first chunk, as if the server were slow.
    const ALWAYS_SPLIT: Policy = Policy {
        measure_for: Duration::ZERO,
        rest: |size, pace, concurrency, align| {
            let slow = Pace {
                first_byte: Duration::ZERO,
                streaming: Duration::from_secs(3600),
                ..pace
            };
            split::rest(size, slow, concurrency, align)
        },
    };

    /// A lead that never cuts, as if the server read the whole object per request.
    const NEVER_SPLIT: Policy = Policy {
        measure_for: Duration::ZERO,
        rest: |_, _, _, _| None,
    };

    /// A real store on disk holding one object of `len` bytes; returns it and the object's meta.
    async fn store_with(dir: &FsPath, len: usize) -> (Arc<dyn ObjectStore>, Vec<u8>, ObjectMeta) {
        use object_store::ObjectStoreExt;
        let root = dir.join("store");
        std::fs::create_dir(&root).unwrap();
        let store: Arc<dyn ObjectStore> =
            Arc::new(object_store::local::LocalFileSystem::new_with_prefix(&root).unwrap());
        let body: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let key = object_store::path::Path::from("big.bin");
        store.put(&key, body.clone().into()).await.unwrap();
        let meta = store.head(&key).await.unwrap();
        (store, body, meta)
    }

    async fn fetch(
        store: &Arc<dyn ObjectStore>,
        meta: &ObjectMeta,
        path: PathBuf,
        hashing: Hashing,
        policy: Policy,
    ) -> Downloaded {
        let files = [Download {
            meta: meta.clone(),
            path,
            hashing,
        }];
        download_with(store.clone(), Service::Local, &files, 4, &|_| {}, policy)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_lead_that_cuts_and_its_helpers_write_every_byte_once() {
        let dir = tempfile::tempdir().unwrap();
        let (store, body, meta) = store_with(dir.path(), (40 << 20) + 12_345).await;
        let part = 5u64 << 20;
        let parts: Vec<_> = body
            .chunks(part as usize)
            .map(|c| Some(Sha256::digest(c).into()))
            .collect();
        let whole: [u8; 32] = Sha256::digest(&body).into();

        // Cut: each part's digest is taken by whichever request held it, and the whole digest
        // is left to the caller (the tail came from helpers). Not cut: one request, and the
        // whole digest comes with it.
        let cases = [
            (
                "split-parts",
                Hashing::Parts(part),
                ALWAYS_SPLIT,
                Digests::Parts(parts.clone()),
            ),
            ("split-whole", Hashing::Whole, ALWAYS_SPLIT, Digests::None),
            (
                "alone-whole",
                Hashing::Whole,
                NEVER_SPLIT,
                Digests::Whole(whole),
            ),
            (
                "alone-parts",
                Hashing::Parts(part),
                NEVER_SPLIT,
                Digests::Parts(parts),
            ),
        ];
        for (name, hashing, policy, digests) in cases {
            let out = dir.path().join(name);
            let done = fetch(&store, &meta, out.clone(), hashing, policy).await;
            assert_eq!(done.bytes, body.len() as u64, "{name}");
            assert!(
                std::fs::read(&out).unwrap() == body,
                "{name}: the file differs"
            );
            assert_eq!(done.digests, vec![digests], "{name}");
        }
    }

    #[tokio::test]
    async fn helpers_of_a_replaced_object_fail_instead_of_mixing_versions() {
        use object_store::ObjectStoreExt;
        let dir = tempfile::tempdir().unwrap();
        let (store, body, meta) = store_with(dir.path(), 40 << 20).await;
        // The object changes after the listing: every request of a large object carries the
        // listed ETag, so none of them may take the new bytes.
        let mut changed = body.clone();
        changed[0] ^= 1;
        store.put(&meta.location, changed.into()).await.unwrap();
        let files = [Download {
            meta: meta.clone(),
            path: dir.path().join("out"),
            hashing: Hashing::None,
        }];
        let got = download_with(store, Service::Local, &files, 4, &|_| {}, ALWAYS_SPLIT).await;
        assert!(got.is_err(), "a replaced object was downloaded");
    }
}
