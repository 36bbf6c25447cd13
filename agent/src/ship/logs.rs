//! Following log files and shipping them as compressed chunks, exactly once.
//!
//! Each followed file is held open, so a file that is renamed away (rotation) or deleted is still
//! read to its end through its handle. Bytes read are buffered per file and cut into a chunk when
//! the buffer reaches `chunk_bytes`, when its oldest byte is `chunk_age` old, or when draining. A
//! chunk's upload is bracketed by two checkpoint writes (intent, then completion; see
//! [`checkpoint`](super::checkpoint)), and its key is derived from its byte range (see
//! [`key`](super::key)), so a crash at any moment leads to the same object being written again,
//! never to a gap or a duplicate.
//!
//! Truncation of a followed file (copytruncate rotation) starts a new generation of that path. The
//! bytes written between our last read and the truncation are recovered from the copy when the
//! copy sits beside the file (it starts with the same bytes); otherwise they are reported lost.
//! A truncation is seen either as the file being shorter than what was read, or, when the writer
//! has already written more than that again (a reader that lags behind a fast writer), as the
//! file's first bytes no longer matching its fingerprint: checked after every read that found new
//! bytes, before those bytes are kept.
//!
//! When storage fails, reading goes on until `spool_max_bytes` are buffered in memory (the files
//! themselves hold the rest), and uploads are retried with the one backoff policy, forever: the
//! sidecar never drops data on its own. This module never prints.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use super::checkpoint::{Checkpoint, Loss, Tracked};
use super::discover::{Found, LogGlob, OpenError, Refusal};
use super::identity::{read_at_most, FileId, Fingerprint};
use super::key::{chunk_key, log_folder, ChunkName};
use crate::error::{Classify, ErrorClass};
use crate::retry::{RetryPolicy, Verdict};

/// How the log shipper behaves. Invariant: `chunk_bytes > 0`, `spool_max_bytes >= chunk_bytes`.
#[derive(Debug, Clone)]
pub struct LogConfig {
    pub globs: Vec<LogGlob>,
    /// `<prefix>/<experiment>/<worker>` inside the store.
    pub worker_prefix: Path,
    /// The redacted storage URL plus identity, recorded in the checkpoint.
    pub destination: String,
    pub state_dir: PathBuf,
    pub chunk_bytes: usize,
    pub chunk_age: Duration,
    pub spool_max_bytes: u64,
    pub retry: RetryPolicy,
}

impl LogConfig {
    /// Defaults for everything but the identity: 8 MiB or 5 s chunks, a 64 MiB spool.
    pub fn new(
        globs: Vec<LogGlob>,
        worker_prefix: Path,
        destination: String,
        state_dir: PathBuf,
    ) -> Self {
        LogConfig {
            globs,
            worker_prefix,
            destination,
            state_dir,
            chunk_bytes: 8 << 20,
            chunk_age: Duration::from_secs(5),
            spool_max_bytes: 64 << 20,
            retry: RetryPolicy::default(),
        }
    }
}

/// Counters for `/metrics` and progress reports. Updated by the shipper, read by anyone.
#[derive(Debug, Default)]
pub struct LogStats {
    pub bytes_read: AtomicU64,
    pub bytes_shipped: AtomicU64,
    pub chunks_shipped: AtomicU64,
    pub upload_failures: AtomicU64,
    pub bytes_lost: AtomicU64,
    /// Bytes read but not yet stored.
    pub backlog_bytes: AtomicU64,
    /// Age in milliseconds of the oldest byte read but not yet stored (0 when none).
    pub oldest_unshipped_ms: AtomicU64,
}

/// A failure that stops the shipper: only local problems (the state folder). Storage failures are
/// retried, never returned.
#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    #[error("cannot write the checkpoint in `{}`: {error}", dir.display())]
    Checkpoint { dir: PathBuf, error: std::io::Error },
}

impl Classify for ShipError {
    fn class(&self) -> ErrorClass {
        ErrorClass::Io
    }

    fn hint(&self) -> Option<String> {
        Some("the --state-dir must be writable and on a volume that outlives the container".into())
    }
}

/// A chunk whose intent is recorded and whose upload has not completed.
struct Pending {
    end: u64,
    gz: Bytes,
}

/// One followed generation. Invariant: `t.in_flight == pending.as_ref().map(|p| p.end)` once the
/// chunk was compressed; `buf` holds the bytes `[t.in_flight.unwrap_or(t.shipped), read_off)`.
struct Active {
    t: Tracked,
    file: Option<File>,
    pending: Option<Pending>,
    buf: BytesMut,
    buf_since: Option<Instant>,
    /// When reading last found no new bytes (for retiring detached files).
    eof_since: Option<Instant>,
    /// Set for a generation that was truncated under us; it only ships what it still holds.
    closed: bool,
}

impl Active {
    /// A new generation of a log path, followed from its first byte.
    fn fresh(
        logical: String,
        generation: u64,
        path: PathBuf,
        id: FileId,
        fingerprint: Fingerprint,
        seen_size: u64,
        file: File,
    ) -> Active {
        Active::following(
            Tracked {
                logical,
                generation,
                path,
                id,
                fingerprint,
                shipped: 0,
                in_flight: None,
                seen_size,
                detached: false,
            },
            file,
        )
    }

    /// Follows `t` through its open `file`, with nothing read or buffered yet.
    fn following(t: Tracked, file: File) -> Active {
        Active {
            t,
            file: Some(file),
            pending: None,
            buf: BytesMut::new(),
            buf_since: None,
            eof_since: None,
            closed: false,
        }
    }

    fn read_off(&self) -> u64 {
        self.t.in_flight.unwrap_or(self.t.shipped) + self.buf.len() as u64
    }

    fn held(&self) -> u64 {
        self.read_off() - self.t.shipped
    }
}

/// What one pass of the shipper did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TickReport {
    pub bytes_read: u64,
    pub bytes_shipped: u64,
    /// Bytes read and not yet stored, after this pass.
    pub backlog: u64,
    /// Whether storage is currently failing.
    pub storage_down: bool,
}

/// Follows the globs and ships their files. See the module docs.
pub struct LogShipper {
    cfg: LogConfig,
    store: Arc<dyn ObjectStore>,
    cp: Checkpoint,
    active: Vec<Active>,
    stats: Arc<LogStats>,
    failures: u32,
    retry_at: Option<Instant>,
    /// When the checkpoint was last written, and whether sizes seen since then are unrecorded.
    saved_at: Instant,
    sizes_unsaved: bool,
    /// Paths already reported as not shipped (each is said once).
    warned: HashSet<PathBuf>,
}

/// How often growth that was read but not yet shipped is recorded, so a loss after a crash can be
/// reported with its size.
const SIZE_SAVE_EVERY: Duration = Duration::from_secs(1);

/// How long a file that was rotated away or deleted is still read after it stopped growing:
/// writers often flush a last burst before reopening.
const RETIRE_AFTER: Duration = Duration::from_secs(2);
const READ_BLOCK: usize = 1 << 20;

impl LogShipper {
    /// Loads the checkpoint and reattaches to the files it names (following renames by inode).
    pub fn open(cfg: LogConfig, store: Arc<dyn ObjectStore>) -> Result<LogShipper, ShipError> {
        let cp_err = |error| ShipError::Checkpoint {
            dir: cfg.state_dir.clone(),
            error,
        };
        std::fs::create_dir_all(&cfg.state_dir).map_err(cp_err)?;
        let mut cp = Checkpoint::load(&cfg.state_dir, &cfg.destination).map_err(cp_err)?;
        let stats = Arc::new(LogStats::default());
        let mut active = Vec::new();
        for t in std::mem::take(&mut cp.files) {
            match reattach(&t) {
                Some((file, path)) => {
                    let mut t = t;
                    if let Ok(meta) = file.metadata() {
                        t.id = FileId::of(&meta);
                    }
                    if path != t.path {
                        tracing::info!(log = %t.logical, from = %t.path.display(), to = %path.display(),
                            "followed a rotated log file");
                        t.path = path;
                        t.detached = true;
                    }
                    let mut a = Active::following(t, file);
                    // An upload was in flight at the crash: redo exactly that range, same key.
                    if let Some(end) = a.t.in_flight {
                        let len = (end - a.t.shipped) as usize;
                        let mut raw = vec![0u8; len];
                        let readable = a
                            .file
                            .as_ref()
                            .and_then(|f| read_at_most(f, &mut raw, a.t.shipped).ok())
                            .is_some_and(|n| n == len);
                        if readable {
                            a.pending = Some(Pending {
                                end,
                                gz: compress(&raw),
                            });
                        } else {
                            record_loss(
                                &mut cp,
                                &stats,
                                &a.t,
                                end - a.t.shipped,
                                "in-flight bytes no longer readable after restart",
                            );
                            a.t.shipped = end;
                            a.t.in_flight = None;
                        }
                    }
                    active.push(a);
                }
                None => {
                    let unshipped = t
                        .seen_size
                        .max(t.in_flight.unwrap_or(0))
                        .saturating_sub(t.shipped);
                    if unshipped > 0 {
                        record_loss(
                            &mut cp,
                            &stats,
                            &t,
                            unshipped,
                            "file disappeared while the sidecar was down",
                        );
                    }
                }
            }
        }
        let mut shipper = LogShipper {
            cfg,
            store,
            cp,
            active,
            stats,
            failures: 0,
            retry_at: None,
            saved_at: Instant::now(),
            sizes_unsaved: false,
            warned: HashSet::new(),
        };
        shipper.save()?;
        Ok(shipper)
    }

    /// The shared counters.
    pub fn stats(&self) -> Arc<LogStats> {
        self.stats.clone()
    }

    /// Losses recorded so far (also logged when they happen).
    pub fn losses(&self) -> &[Loss] {
        &self.cp.losses
    }

    /// One pass: find new and rotated files, read what was appended, ship what is due. With
    /// `flush`, every buffered byte is due (draining).
    pub async fn tick(&mut self, flush: bool) -> Result<TickReport, ShipError> {
        let mut report = TickReport::default();
        let mut dirty = self.scan();
        report.bytes_read = self.read_all();
        let now = Instant::now();
        let storage_ready = self.retry_at.is_none_or(|t| now >= t);
        if storage_ready {
            for i in 0..self.active.len() {
                loop {
                    let due = {
                        let a = &self.active[i];
                        a.pending.is_some()
                            || (!a.buf.is_empty()
                                && (flush
                                    || a.closed
                                    || a.buf.len() >= self.cfg.chunk_bytes
                                    || a.buf_since.is_some_and(|s| {
                                        now.duration_since(s) >= self.cfg.chunk_age
                                    })
                                    || (a.t.detached && a.eof_since.is_some())))
                    };
                    if !due {
                        break;
                    }
                    match self.ship_one(i).await? {
                        Some(n) => {
                            report.bytes_shipped += n;
                            dirty = false;
                        }
                        None => break,
                    }
                    if self.retry_at.is_some() {
                        break;
                    }
                    // Read more of this file if the buffer was capped, so a big backlog keeps moving.
                    if self.active[i].buf.len() < self.cfg.chunk_bytes {
                        report.bytes_read += self.read_one(i);
                    }
                }
                if self.retry_at.is_some() {
                    break;
                }
            }
        }
        if self.retire(flush) {
            dirty = true;
        }
        if self.sizes_unsaved && self.saved_at.elapsed() >= SIZE_SAVE_EVERY {
            dirty = true;
        }
        if dirty {
            self.save()?;
        }
        report.backlog = self.active.iter().map(Active::held).sum();
        report.storage_down = self.retry_at.is_some();
        self.stats
            .backlog_bytes
            .store(report.backlog, Ordering::Relaxed);
        let oldest = self
            .active
            .iter()
            .filter_map(|a| a.buf_since)
            .min()
            .map(|s| s.elapsed().as_millis() as u64)
            .unwrap_or(0);
        self.stats
            .oldest_unshipped_ms
            .store(oldest, Ordering::Relaxed);
        Ok(report)
    }

    /// Whether anything read is not yet stored.
    pub fn has_backlog(&self) -> bool {
        self.active.iter().any(|a| a.held() > 0)
    }

    /// Finds files the globs match that are not followed yet, and followed files that left their
    /// path. Returns whether the checkpoint must be saved.
    fn scan(&mut self) -> bool {
        let mut changed = false;
        for a in &mut self.active {
            if a.t.detached || a.closed {
                continue;
            }
            let still_here = std::fs::metadata(&a.t.path)
                .map(|m| FileId::of(&m) == a.t.id)
                .unwrap_or(false);
            if !still_here {
                tracing::info!(log = %a.t.logical, path = %a.t.path.display(),
                    "log file was rotated away or deleted; reading it to its end");
                a.t.detached = true;
                changed = true;
            }
        }
        let globs = self.cfg.globs.clone();
        for glob in &globs {
            let m = glob.matches();
            for r in m.refused {
                self.refused(r);
            }
            for Found { path, logical } in m.found {
                let file = match glob.open(&path) {
                    Ok(f) => f,
                    Err(OpenError::Refused(r)) => {
                        self.refused(r);
                        continue;
                    }
                    Err(OpenError::Io(_)) => continue,
                };
                let Ok(meta) = file.metadata() else { continue };
                let id = FileId::of(&meta);
                if self.active.iter().any(|a| a.t.id == id && !a.closed) {
                    continue;
                }
                let Ok(fingerprint) = Fingerprint::take(&file) else {
                    continue;
                };
                let generation = self.cp.next_generation(&logical);
                tracing::info!(log = %logical, path = %path.display(), generation, "following log file");
                self.active.push(Active::fresh(
                    logical,
                    generation,
                    path,
                    id,
                    fingerprint,
                    0,
                    file,
                ));
                changed = true;
            }
        }
        changed
    }

    /// Says once per path why a matched file is not shipped.
    fn refused(&mut self, r: Refusal) {
        if self.warned.insert(r.path.clone()) {
            tracing::warn!(path = %r.path.display(), reason = r.reason, "log file not shipped");
        }
    }

    fn read_all(&mut self) -> u64 {
        (0..self.active.len()).map(|i| self.read_one(i)).sum()
    }

    /// Reads what was appended to file `i`, up to the chunk size and the spool limit.
    fn read_one(&mut self, i: usize) -> u64 {
        let spool_used: u64 = self.active.iter().map(Active::held).sum();
        let chunk = self.cfg.chunk_bytes;
        let mut total = 0u64;
        let size = match self.active[i].file.as_ref().map(File::metadata) {
            Some(Ok(m)) => m.len(),
            _ => return 0,
        };
        if size < self.active[i].read_off() {
            self.truncated(i, size);
            return 0;
        }
        let a = &mut self.active[i];
        if size > a.t.seen_size {
            a.t.seen_size = size;
            self.sizes_unsaved = true;
        }
        let Some(file) = a.file.as_ref() else {
            return 0;
        };
        let kept = a.buf.len();
        while a.read_off() < size
            && a.buf.len() < chunk
            && spool_used + total < self.cfg.spool_max_bytes
        {
            let offset = a.read_off();
            let want = ((size - offset) as usize)
                .min(READ_BLOCK)
                .min(chunk - a.buf.len());
            let start = a.buf.len();
            a.buf.resize(start + want, 0);
            let n = match read_at_most(file, &mut a.buf[start..], offset) {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(log = %a.t.logical, error = %e, "cannot read log file");
                    0
                }
            };
            a.buf.truncate(start + n);
            if n == 0 {
                break;
            }
            if a.buf_since.is_none() {
                a.buf_since = Some(Instant::now());
            }
            total += n as u64;
        }
        // Truncated and written again past our offset since the last read: what was just read
        // belongs to the new generation, not to the end of ours.
        if total > 0 && !a.t.fingerprint.matches(file).unwrap_or(true) {
            a.buf.truncate(kept);
            if a.buf.is_empty() {
                a.buf_since = None;
            }
            self.truncated(i, size);
            return 0;
        }
        // Refresh a short fingerprint as the file grows, so inode reuse is caught reliably.
        if a.t.fingerprint.is_partial() && a.t.shipped == 0 && a.t.in_flight.is_none() {
            if let Ok(fp) = Fingerprint::take(file) {
                a.t.fingerprint = fp;
            }
        }
        if total == 0 {
            a.eof_since.get_or_insert_with(Instant::now);
        } else {
            a.eof_since = None;
        }
        self.stats.bytes_read.fetch_add(total, Ordering::Relaxed);
        total
    }

    /// File `i` was truncated in place (copytruncate): it shrank below what we read, or its first
    /// bytes changed.
    fn truncated(&mut self, i: usize, new_size: u64) {
        let read_off = self.active[i].read_off();
        let old = &self.active[i].t;
        tracing::info!(log = %old.logical, generation = old.generation, read = read_off, now = new_size,
            "log file was truncated (copytruncate); starting a new generation");
        // The copy made just before the truncation starts with the same bytes: finish the old
        // generation from it, so nothing written before the truncation is lost.
        let copy = find_copy(&old.path, &old.fingerprint, old.id, read_off);
        let (logical, path, id) = (old.logical.clone(), old.path.clone(), old.id);
        let file_for_new = self.active[i].file.take();
        let a = &mut self.active[i];
        match copy {
            Some((file, copy_path, copy_id)) => {
                tracing::info!(copy = %copy_path.display(), "reading the rest of the old generation from its copy");
                a.file = Some(file);
                a.t.path = copy_path;
                a.t.id = copy_id;
                a.t.detached = true;
                // The copy has not been read yet: an end-of-file seen on the truncated file must
                // not retire this generation before its rest is read from the copy.
                a.eof_since = None;
            }
            None => {
                tracing::warn!(log = %logical,
                    "no copy of the truncated file was found beside it; bytes written between the last read and the truncation may be lost");
                a.closed = true;
            }
        }
        let Some(file) = file_for_new else { return };
        let fingerprint = Fingerprint::take(&file).unwrap_or(Fingerprint { len: 0, crc: 0 });
        let generation = self.cp.next_generation(&logical);
        self.active.push(Active::fresh(
            logical,
            generation,
            path,
            id,
            fingerprint,
            new_size,
            file,
        ));
    }

    /// Ships the next chunk of file `i`. Returns the bytes stored, or `None` when storage failed
    /// (the chunk stays pending and is retried after the backoff).
    async fn ship_one(&mut self, i: usize) -> Result<Option<u64>, ShipError> {
        if self.active[i].pending.is_none() {
            let a = &mut self.active[i];
            let len = a.buf.len().min(self.cfg.chunk_bytes);
            if len == 0 {
                return Ok(Some(0));
            }
            let raw = a.buf.split_to(len).freeze();
            let end = a.t.shipped + len as u64;
            let gz = tokio::task::spawn_blocking(move || compress(&raw))
                .await
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
            a.t.in_flight = Some(end);
            a.pending = Some(Pending { end, gz });
            if a.buf.is_empty() {
                a.buf_since = None;
            }
            // Intent: recorded before the upload starts.
            self.save()?;
        }
        let a = &self.active[i];
        let Some(p) = a.pending.as_ref() else {
            return Ok(Some(0));
        };
        let name = ChunkName {
            generation: a.t.generation,
            start: a.t.shipped,
            end: p.end,
        };
        let key = chunk_key(&log_folder(&self.cfg.worker_prefix, &a.t.logical), name);
        let payload = PutPayload::from_bytes(p.gz.clone());
        match self.store.put(&key, payload).await {
            Ok(_) => {
                let a = &mut self.active[i];
                let n = name.end - name.start;
                a.t.shipped = name.end;
                a.t.in_flight = None;
                a.pending = None;
                self.failures = 0;
                self.retry_at = None;
                self.stats.bytes_shipped.fetch_add(n, Ordering::Relaxed);
                self.stats.chunks_shipped.fetch_add(1, Ordering::Relaxed);
                // Completion.
                self.save()?;
                Ok(Some(n))
            }
            Err(e) => {
                self.failures += 1;
                self.stats.upload_failures.fetch_add(1, Ordering::Relaxed);
                let wait = self.cfg.retry.delay(self.failures, Verdict::Transient);
                self.retry_at = Some(Instant::now() + wait);
                let backlog: u64 = self.active.iter().map(Active::held).sum();
                tracing::warn!(key = %key, error = %crate::storage::scrub(&e.to_string()), retry_in_ms = wait.as_millis() as u64,
                    backlog_bytes = backlog, "log upload failed; will retry (nothing is dropped)");
                Ok(None)
            }
        }
    }

    /// Drops generations that are fully shipped and will not grow: rotated away and quiet, or
    /// truncated. Returns whether any were dropped.
    fn retire(&mut self, flush: bool) -> bool {
        let before = self.active.len();
        self.active.retain(|a| {
            let done = a.held() == 0
                && (a.closed
                    || (a.t.detached
                        && a.eof_since
                            .is_some_and(|s| flush || s.elapsed() >= RETIRE_AFTER)));
            if done {
                tracing::info!(log = %a.t.logical, generation = a.t.generation, bytes = a.t.shipped,
                    "finished shipping a rotated log file");
            }
            !done
        });
        self.active.len() != before
    }

    fn save(&mut self) -> Result<(), ShipError> {
        self.saved_at = Instant::now();
        self.sizes_unsaved = false;
        self.cp.files = self
            .active
            .iter()
            .filter(|a| !a.closed || a.held() > 0)
            .map(|a| a.t.clone())
            .collect();
        self.cp
            .save(&self.cfg.state_dir)
            .map_err(|error| ShipError::Checkpoint {
                dir: self.cfg.state_dir.clone(),
                error,
            })
    }
}

fn record_loss(cp: &mut Checkpoint, stats: &LogStats, t: &Tracked, bytes: u64, reason: &str) {
    tracing::error!(log = %t.logical, generation = t.generation, bytes, reason, "log bytes lost");
    stats.bytes_lost.fetch_add(bytes, Ordering::Relaxed);
    cp.losses.push(Loss {
        logical: t.logical.clone(),
        generation: t.generation,
        bytes,
        reason: reason.to_string(),
    });
}

/// Reopens a tracked file after a restart: at its last path, or renamed within the same folder.
fn reattach(t: &Tracked) -> Option<(File, PathBuf)> {
    let try_path = |p: &FsPath| -> Option<File> {
        let f = File::open(p).ok()?;
        let meta = f.metadata().ok()?;
        (FileId::of(&meta) == t.id && t.fingerprint.matches(&f).ok()?).then_some(f)
    };
    if let Some(f) = try_path(&t.path) {
        return Some((f, t.path.clone()));
    }
    let dir = t.path.parent()?;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let p = entry.path();
        if let Some(f) = try_path(&p) {
            return Some((f, p));
        }
    }
    // Truncated in place while we were down (copytruncate): continue from the copy beside it.
    let needed = t.in_flight.unwrap_or(t.shipped);
    find_copy(
        &t.path,
        &t.fingerprint,
        FileId {
            dev: u64::MAX,
            ino: u64::MAX,
        },
        needed,
    )
    .map(|(f, p, _)| (f, p))
}

/// Looks beside `path` for a copy of a truncated file: another file that starts with the same
/// bytes and is at least `min_len` long.
fn find_copy(
    path: &FsPath,
    fp: &Fingerprint,
    not: FileId,
    min_len: u64,
) -> Option<(File, PathBuf, FileId)> {
    let dir = path.parent()?;
    let mut best: Option<(File, PathBuf, FileId, std::time::SystemTime)> = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let p = entry.path();
        let Ok(f) = File::open(&p) else { continue };
        let Ok(meta) = f.metadata() else { continue };
        let id = FileId::of(&meta);
        if id == not || !meta.is_file() || meta.len() < min_len || fp.len == 0 {
            continue;
        }
        if fp.matches(&f).unwrap_or(false) {
            let mtime = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
            if best.as_ref().is_none_or(|b| mtime > b.3) {
                best = Some((f, p, id, mtime));
            }
        }
    }
    best.map(|(f, p, id, _)| (f, p, id))
}

/// Gzip at the fastest level: deterministic (no timestamp in the header), so the same bytes always
/// make the same object.
pub fn compress(raw: &[u8]) -> Bytes {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(raw.len() / 4 + 64),
        flate2::Compression::fast(),
    );
    // Writing into a Vec cannot fail.
    let _ = enc.write_all(raw);
    Bytes::from(enc.finish().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// `n` numbered lines starting with `tag`, so any misplaced range changes the content.
    fn lines(tag: &str, n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for i in 0..n {
            writeln!(out, "{tag}-{i:08} some words of a training log").unwrap();
        }
        out
    }

    #[tokio::test]
    async fn a_copytruncate_the_reader_lags_behind_is_caught_by_the_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        let store_dir = dir.path().join("store");
        std::fs::create_dir_all(&logs).unwrap();
        std::fs::create_dir_all(&store_dir).unwrap();
        let store: Arc<dyn ObjectStore> =
            Arc::new(object_store::local::LocalFileSystem::new_with_prefix(&store_dir).unwrap());
        let glob = LogGlob::new(&format!("{}/*.log", logs.display())).unwrap();
        let prefix = Path::from("exp/worker-0");
        let mut cfg = LogConfig::new(
            vec![glob],
            prefix.clone(),
            "test".into(),
            dir.path().join("state"),
        );
        cfg.chunk_bytes = 64 << 10;
        let mut shipper = LogShipper::open(cfg, store.clone()).unwrap();

        let log = logs.join("app.log");
        let old = lines("old", 8000); // about 390 KB
        std::fs::write(&log, &old).unwrap();
        // The reader takes one chunk and falls behind (as while it ships a backlog or storage
        // is slow): it has read less than the writer will write after the truncation.
        shipper.scan();
        assert_eq!(shipper.read_one(0), 64 << 10);

        // copytruncate, then the writer writes more than the reader had read.
        std::fs::copy(&log, logs.join("app.log.1")).unwrap();
        let mut f = std::fs::OpenOptions::new().write(true).open(&log).unwrap();
        f.set_len(0).unwrap();
        let new = lines("new", 6000);
        f.write_all(&new).unwrap();
        drop(f);

        let mut idle = 0;
        for _ in 0..200 {
            let report = shipper.tick(true).await.unwrap();
            idle = if report.bytes_read == 0 && report.backlog == 0 {
                idle + 1
            } else {
                0
            };
            if idle == 5 {
                break;
            }
        }
        assert!(shipper.losses().is_empty(), "{:?}", shipper.losses());
        let mut stored = Vec::new();
        crate::ship::reassemble::cat(&store, &log_folder(&prefix, "app.log"), &mut stored)
            .await
            .unwrap();
        let mut expected = old;
        expected.extend_from_slice(&new);
        assert!(
            stored == expected,
            "stored {} bytes, expected {}; first difference at {:?}",
            stored.len(),
            expected.len(),
            stored.iter().zip(&expected).position(|(a, b)| a != b)
        );
    }
}
