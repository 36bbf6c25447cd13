//! Following log files and shipping them as compressed chunks, exactly once, whatever names
//! rotation gives them.
//!
//! Each followed file is held open, so a file that is renamed away (rotation) or deleted is still
//! read to its end through its handle. Bytes read are buffered per file and cut into a chunk when
//! the buffer reaches `chunk_bytes`, when its oldest byte is `chunk_age` old, or when draining. A
//! chunk's upload is bracketed by two checkpoint writes (intent, then completion; see
//! [`checkpoint`](super::checkpoint)), and its key is derived from its byte range (see
//! [`key`](super::key)), so a crash at any moment leads to the same object being written again,
//! never to a gap or a duplicate.
//!
//! A file's bytes are stored once, under the path where it was first seen. When a glob also
//! matches rotated names, the same bytes show up again: the renamed file (same inode), the copy
//! `copytruncate` made, the gzip `compress` made. Each pass looks at every matched path: a path
//! that holds the file it held before costs a `stat`; a path with a new file is checked against
//! what is followed and what was shipped ([`recognize`](super::recognize)); a file that holds
//! stored bytes gets a link there instead of chunks (see [`key`](super::key)); any other file is
//! a new generation of its path. A file that held bytes already stored is remembered (by inode,
//! size, first and last bytes and the CRC of what it holds) while it is in sight, so a later
//! rename or compression of it is recognised too, also after a restart.
//!
//! Truncation of a followed file (copytruncate) starts a new generation of that path (see
//! [`follow`](super::follow) and [`rewritten`]). The bytes written between our last read and the
//! truncation are read from the copy beside the file (plain or gzip, found by content); otherwise
//! they are reported lost. Generations written and rotated away between two passes are stored
//! as generations of the log, in the order their copies were made. A generation whose file was truncated or compressed away while the sidecar was down is
//! continued from that copy on restart.
//!
//! When storage fails, reading goes on until `spool_max_bytes` are buffered in memory (the files
//! themselves hold the rest), and uploads are retried with the one backoff policy, forever: the
//! sidecar never drops data on its own. This module never prints.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Read as _;
use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use super::checkpoint::{Checkpoint, Held, Loss, Occupant, Tracked, GONE_KEPT};
use super::discover::{self, open_read, LogGlob, OpenError, Refusal};
use super::follow::{Active, Pending, Read};
use super::identity::{self, FileId, Fingerprint, Prefix, Window, FINGERPRINT_BYTES};
use super::key::{chunk_key, link_key, log_folder, ChunkName, Link};
use super::recognize::{self, Candidate, Verdict as Recognized};
use super::source::{self, Source};
use crate::error::{Classify, ErrorClass};
use crate::retry::{RetryPolicy, Verdict};

mod rewritten;
use rewritten::Before;

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
    /// Failed checkpoint writes (a full or read-only `--state-dir`).
    pub checkpoint_failures: AtomicU64,
    /// Why the checkpoint cannot be written, while it cannot (uploads wait meanwhile).
    pub checkpoint_error: std::sync::Mutex<Option<String>>,
}

impl LogStats {
    /// Why the checkpoint cannot be written now, if it cannot.
    pub fn checkpoint_failing(&self) -> Option<String> {
        self.checkpoint_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn set_checkpoint_error(&self, error: Option<String>) {
        *self
            .checkpoint_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = error;
    }
}

/// A failure that stops the shipper: the state folder cannot be created or its checkpoint read at
/// start. Storage failures, and checkpoint writes that fail (a full disk), are retried, never
/// returned.
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

/// A new file whose nature is not settled yet: a short prefix of a followed file, or a gzip that
/// does not decompress to its end (both usually still being written).
struct Waiting {
    size: u64,
    since: Instant,
}

/// Which record a candidate came from.
#[derive(Clone, Copy)]
enum Record {
    Active(usize),
    Held(usize),
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
    /// The last checkpoint write failed: the checkpoint on disk is behind. Nothing is uploaded
    /// until a write succeeds (each upload's intent must be on disk first); retried after
    /// `save_retry_at`.
    unsaved: bool,
    save_failures: u32,
    save_retry_at: Option<Instant>,
    /// Paths already reported as not shipped (each is said once).
    warned: HashSet<PathBuf>,
    waiting: HashMap<FileId, Waiting>,
    /// Files this scan found to hold more of a followed generation than its own file does now;
    /// settled at the end of the scan.
    before: Vec<Before>,
    /// How many scans were made (the current one's number, during a scan).
    scans: u64,
}

/// How often growth that was read but not yet shipped is recorded, so a loss after a crash can be
/// reported with its size.
const SIZE_SAVE_EVERY: Duration = Duration::from_secs(1);

/// How long a file that was rotated away or deleted is still read after it stopped growing:
/// writers often flush a last burst before reopening.
const RETIRE_AFTER: Duration = Duration::from_secs(2);

/// How long a new file that is a short prefix of a followed one must stay the same before it is
/// taken for a file of its own (a copy being written grows meanwhile).
const SETTLE: Duration = Duration::from_secs(1);

/// How long a `.gz` that does not decompress to its end may stay the same before it is shipped
/// as it is (compressed).
const GZIP_SETTLE: Duration = Duration::from_secs(30);

impl LogShipper {
    /// Loads the checkpoint and reattaches to the files it names (following renames by inode, and
    /// truncations or compressions made while the sidecar was down to the copy that holds the rest).
    pub fn open(cfg: LogConfig, store: Arc<dyn ObjectStore>) -> Result<LogShipper, ShipError> {
        let cp_err = |error| ShipError::Checkpoint {
            dir: cfg.state_dir.clone(),
            error,
        };
        // A disk with no room for the folder is waited for: the checkpoint's first write makes it.
        match std::fs::create_dir_all(&cfg.state_dir) {
            Err(e) if !crate::fsutil::no_room(&e) => return Err(cp_err(e)),
            _ => {}
        }
        let mut cp = Checkpoint::load(&cfg.state_dir, &cfg.destination).map_err(cp_err)?;
        // Older checkpoints hold no CRC of what was stored: take it from the file when it is found.
        let legacy = cp.version < 2;
        cp.version = 2;
        let stats = Arc::new(LogStats::default());
        let mut active = Vec::new();
        for t in std::mem::take(&mut cp.files) {
            let Some((source, path)) = reattach(&t, legacy) else {
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
                continue;
            };
            let mut t = t;
            if let Ok(id) = source.id() {
                t.id = id;
            }
            t.gzip = source.is_gzip();
            if path != t.path {
                tracing::info!(log = %t.logical, generation = t.generation, from = %t.path.display(), to = %path.display(),
                    "followed a rotated log file");
                t.path = path;
                t.detached = true;
            }
            let mut a = Active::following(t, source);
            if legacy {
                a.adopt_legacy();
            }
            // An upload was in flight at the crash: redo exactly that range, same key.
            if let Some(end) = a.t.in_flight {
                let len = (end - a.t.shipped) as usize;
                let mut raw = vec![0u8; len];
                let shipped = a.t.shipped;
                let readable = a
                    .source
                    .as_mut()
                    .and_then(|s| s.read_at(&mut raw, shipped).ok())
                    .is_some_and(|n| n == len);
                if readable {
                    let prefix = a.t.stored().then(&raw);
                    let tail = Window::of_bytes(end, &raw);
                    a.tail = tail;
                    a.pending = Some(Pending {
                        end,
                        gz: compress(&raw),
                        prefix,
                        tail,
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
            unsaved: false,
            save_failures: 0,
            save_retry_at: None,
            warned: HashSet::new(),
            waiting: HashMap::new(),
            before: Vec::new(),
            scans: 0,
        };
        shipper.save();
        Ok(shipper)
    }

    /// Before the first pass of attempt `attempt` of the worker: learns, once per attempt from
    /// the second on, the generations earlier attempts stored, so that new ones are numbered
    /// after them ([`stored`](super::stored)). Listing fails only when storage does: try again.
    pub async fn continue_stored(&mut self, attempt: u32) -> Result<(), object_store::Error> {
        if attempt < 2 || self.cp.listed_attempt >= attempt {
            return Ok(());
        }
        let found = super::stored::stored_generations(&self.store, &self.cfg.worker_prefix).await?;
        tracing::info!(
            attempt,
            paths = found.len(),
            "numbering this attempt's log generations after those earlier attempts stored"
        );
        for (path, generation) in found {
            let g = self.cp.stored_before.entry(path).or_insert(0);
            *g = generation.max(*g);
        }
        self.cp.listed_attempt = attempt;
        // A failed save holds uploads back until it succeeds; the numbering is right meanwhile.
        self.save();
        Ok(())
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
        let mut dirty = false;
        if self.scan() {
            // Names and links are recorded before anything is uploaded for them.
            self.save();
        }
        report.bytes_read = self.read_all();
        let now = Instant::now();
        let storage_ready = self.retry_at.is_none_or(|t| now >= t) && self.saved_or_retried();
        if storage_ready {
            report.bytes_shipped += self.upload_links().await?;
        }
        if storage_ready && self.retry_at.is_none() {
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
                    if self.retry_at.is_some() || self.unsaved {
                        break;
                    }
                    // Read more of this file if the buffer was capped, so a big backlog keeps moving.
                    if self.active[i].buf.len() < self.cfg.chunk_bytes {
                        report.bytes_read += self.read_one(i);
                    }
                }
                if self.retry_at.is_some() || self.unsaved {
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
        if dirty || (self.unsaved && self.saved_or_retried()) {
            self.save();
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

    /// Whether anything read, or any link recorded, is not yet stored.
    pub fn has_backlog(&self) -> bool {
        self.active.iter().any(|a| a.held() > 0) || !self.cp.links.is_empty()
    }

    /// Finds files the globs match that are new to their path, and followed files that left their
    /// path. Returns whether the checkpoint must be saved.
    fn scan(&mut self) -> bool {
        self.scans += 1;
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
        let (mut found, mut refused) = (Vec::new(), Vec::new());
        for (g, glob) in self.cfg.globs.iter().enumerate() {
            let m = glob.matches();
            refused.extend(m.refused);
            found.extend(m.found.into_iter().map(|f| (g, f)));
        }
        for r in refused {
            self.refused(r);
        }
        // A log comes before its rotated names (app.log before app.log.1 and app.1.log).
        discover::sort_logs_first(&mut found, |f| &f.1.logical);
        let mut seen: HashSet<FileId> = HashSet::new();
        let mut seen_names: HashSet<String> = HashSet::new();
        for (g, f) in found {
            let Ok(meta) = std::fs::metadata(&f.path) else {
                continue;
            };
            let id = FileId::of(&meta);
            seen.insert(id);
            seen_names.insert(f.logical.clone());
            if self.settled(&f.logical, id, meta.len()) {
                continue;
            }
            changed |= self.arrived(g, f.path, f.logical, id);
        }
        changed |= self.settle_before();
        changed |= self.rewritten_behind_copies();
        // Files rotated out of sight are kept a while (their copies are still recognised).
        for h in self
            .cp
            .held
            .iter_mut()
            .filter(|h| !h.gone && !seen.contains(&h.id))
        {
            let there = std::fs::metadata(&h.path).is_ok_and(|m| FileId::of(&m) == h.id);
            if !there {
                h.gone = true;
                changed = true;
            }
        }
        let gone = self.cp.held.iter().filter(|h| h.gone).count();
        if gone > GONE_KEPT {
            let mut drop = gone - GONE_KEPT;
            self.cp.held.retain(|h| {
                let keep = !h.gone || drop == 0;
                if !keep {
                    drop -= 1;
                }
                keep
            });
        }
        // A path that holds a rotated file names it only while it is there.
        let before = self.cp.names.len();
        self.cp
            .names
            .retain(|name, o| o.origin || seen_names.contains(name) || seen.contains(&o.id));
        changed |= self.cp.names.len() != before;
        self.waiting.retain(|id, _| seen.contains(id));
        changed
    }

    /// Says once per path why a matched file is not shipped.
    fn refused(&mut self, r: Refusal) {
        if self.warned.insert(r.path.clone()) {
            tracing::warn!(path = %r.path.display(), reason = r.reason, "log file not shipped");
        }
    }

    /// Whether `logical` still holds the file it held at the last pass (nothing to do): the same
    /// inode, and that inode still the file of the same generation (an inode number freed by a
    /// deleted copy is often given to the next one).
    fn settled(&self, logical: &str, id: FileId, size: u64) -> bool {
        let Some(o) = self.cp.names.get(logical).filter(|o| o.id == id) else {
            return false;
        };
        let same = |l: &str, g: u64| o.from == l && o.from_generation == g;
        self.active
            .iter()
            .any(|a| !a.closed && a.t.id == id && same(&a.t.logical, a.t.generation))
            || self
                .cp
                .held
                .iter()
                .any(|h| !h.gone && h.id == id && h.seen == size && same(&h.logical, h.generation))
    }

    /// A file that is new to its path: a followed or held file under a new name (rotation), a copy
    /// or gzip of one, or a file of its own. Returns whether the checkpoint changed.
    fn arrived(&mut self, glob: usize, path: PathBuf, logical: String, id: FileId) -> bool {
        // A followed file under a new name.
        if let Some(a) = self.active.iter_mut().find(|a| !a.closed && a.t.id == id) {
            if a.t.detached {
                a.t.path = path;
            }
            let from = (a.t.logical.clone(), a.t.generation);
            self.name(&logical, id, from);
            return true;
        }
        let file = match self.cfg.globs[glob].open(&path) {
            Ok(f) => f,
            Err(OpenError::Refused(r)) => {
                self.refused(r);
                return false;
            }
            Err(OpenError::Io(_)) => return false,
        };
        let Ok(meta) = file.metadata() else {
            return false;
        };
        if FileId::of(&meta) != id {
            // Replaced between the walk and the open: the next pass sees the new one.
            return false;
        }
        let size = meta.len();
        // A held file (rotated and read to its end, or a copy) under a new name, or grown.
        if let Some(hi) = self.cp.held.iter().position(|h| !h.gone && h.id == id) {
            let h = &self.cp.held[hi];
            if h.still_holds(&file) {
                let from = (h.logical.clone(), h.generation);
                if size > h.seen && !h.copy && !h.gzip {
                    // Written to again after it was read to its end: follow it again.
                    let h = self.cp.held.remove(hi);
                    tracing::info!(log = %h.logical, generation = h.generation, path = %path.display(),
                        "a rotated log file grew again; shipping the rest");
                    self.active
                        .push(Active::resumed(&h, path, id, Source::Plain(file), size));
                    self.name(&logical, id, from);
                    return true;
                }
                if size == self.cp.held[hi].seen {
                    self.cp.held[hi].path = path;
                    self.name(&logical, id, from);
                    return true;
                }
            }
            // Its inode now holds another file (reused after the old one was deleted), or a
            // copy goes on growing: look at the file afresh. What the record knows of the bytes
            // stays, as for any file gone, so a gzip or copy of them is still recognised.
            self.cp.held[hi].gone = true;
        }
        if size == 0 {
            return false;
        }
        self.recognize_new(path, logical, id, file, size)
    }

    /// Decides what a file with an unknown inode holds; see [`recognize`](super::recognize).
    fn recognize_new(
        &mut self,
        path: PathBuf,
        logical: String,
        id: FileId,
        file: File,
        size: u64,
    ) -> bool {
        let gzip = source::is_gzip(&path, &file);
        if let Some(w) = self.waiting.get_mut(&id) {
            if w.size != size {
                w.size = size;
                w.since = Instant::now();
                return false;
            }
        }
        // Where files are first seen, a new file is never taken for a copy of that path's own
        // generations (a new log often starts with the banner the last one started with), nor of
        // another log's (two logs may share a banner); but it may be a copy of the log it is a
        // rotated name of (`app.log.1`, `app.1.log.gz` of `app.log`), or of another rotated name
        // of that log (`app.log.1` compressed to `app.log.2.gz`): a rotated name the sidecar
        // first saw as a file of its own (it was there before the sidecar started) gets copies
        // later.
        let own = self
            .cp
            .names
            .get(&logical)
            .is_some_and(|o| o.origin)
            .then(|| logical.clone());
        let file_name = |l: &str| l.rsplit('/').next().unwrap_or(l).to_string();
        let this_name = file_name(&logical);
        let logs: Vec<String> = self.cp.names.keys().map(|l| file_name(l)).collect();
        let other = |l: &str| match own.as_deref() {
            None => true,
            Some(own) => {
                own != l
                    && discover::rotated_together(
                        &this_name,
                        &file_name(l),
                        logs.iter().map(String::as_str),
                    )
            }
        };
        if !self.active.iter().any(|a| !a.closed && other(&a.t.logical))
            && !self.cp.held.iter().any(|h| other(&h.logical))
            && own.is_some()
        {
            // Nothing to compare it with.
            return self.start(path, logical, id, file, size);
        }
        let held_files: Vec<Option<File>> = self
            .cp
            .held
            .iter()
            .map(|h| {
                if h.gone || h.gzip {
                    return None;
                }
                let f = open_read(&h.path, false).ok()?;
                let same = f.metadata().is_ok_and(|m| FileId::of(&m) == h.id);
                (same && h.still_holds(&f)).then_some(f)
            })
            .collect();
        let mut refs = Vec::new();
        let mut candidates = Vec::new();
        for (i, a) in self.active.iter().enumerate().rev() {
            if !a.closed && other(&a.t.logical) {
                refs.push(Record::Active(i));
                let mut c = a.candidate();
                // A copy its own file no longer holds is looked for only where rotation puts
                // copies of it (elsewhere it may be another file that starts the same way), and
                // only once the generation was followed before this scan (a copy found with it
                // may be of an earlier generation).
                if !discover::is_rotated_name(&this_name, &file_name(&a.t.logical))
                    || a.since_scan == self.scans
                {
                    c.live = None;
                }
                candidates.push(c);
            }
        }
        for (j, h) in self.cp.held.iter().enumerate().rev() {
            if !other(&h.logical) {
                continue;
            }
            let fp = h.fingerprint;
            let mut prefixes = vec![
                h.held,
                Prefix {
                    len: fp.len,
                    crc: fp.crc,
                },
            ];
            prefixes.extend(h.ends.iter().copied());
            refs.push(Record::Held(j));
            candidates.push(Candidate {
                fingerprint: h.fingerprint,
                prefixes,
                buffered: None,
                intact: held_files[j].as_ref(),
                live: None,
                rewritten: false,
            });
        }
        let verdict = recognize::recognize(&file, gzip, &candidates);
        drop(candidates);
        let verdict = match verdict {
            // A file truncated while it was compared: this pass reads the truncation, the next
            // one looks at the new file again.
            Ok(Recognized::Again) | Err(_) => return false,
            Ok(v) => v,
        };
        if let Recognized::Before { index } | Recognized::Later { index } = verdict {
            if let Record::Active(i) = refs[index] {
                let a = &self.active[i];
                self.before.push(Before {
                    of: (a.t.logical.clone(), a.t.generation),
                    holds_stored: matches!(verdict, Recognized::Before { .. }),
                    made: file
                        .metadata()
                        .and_then(|m| m.modified())
                        .unwrap_or(SystemTime::UNIX_EPOCH),
                    path,
                    logical,
                    id,
                    file,
                    gzip,
                });
            }
            return false;
        }
        let settle = match verdict {
            Recognized::Unsure => Some(SETTLE),
            Recognized::Unfinished => Some(GZIP_SETTLE),
            _ => None,
        };
        if let Some(settle) = settle {
            let w = self.waiting.entry(id).or_insert(Waiting {
                size,
                since: Instant::now(),
            });
            if w.since.elapsed() < settle {
                return false;
            }
            if gzip && verdict == Recognized::Unfinished {
                tracing::warn!(path = %path.display(),
                    "a .gz log file does not decompress to its end; shipping it as it is (compressed)");
            }
        }
        self.waiting.remove(&id);
        let Recognized::Holds {
            index,
            held,
            extends,
        } = verdict
        else {
            // A file of its own, shipped as it is (a .gz that is not a rotated copy too).
            return self.start(path, logical, id, file, size);
        };
        let (from, resumable) = match refs[index] {
            Record::Active(i) => {
                let a = &self.active[i];
                ((a.t.logical.clone(), a.t.generation), None)
            }
            Record::Held(j) => {
                let h = &self.cp.held[j];
                let generation_followed = self
                    .active
                    .iter()
                    .any(|a| a.t.logical == h.logical && a.t.generation == h.generation);
                let resume = extends && !h.copy && !generation_followed;
                ((h.logical.clone(), h.generation), resume.then_some(j))
            }
        };
        if let Some(j) = resumable {
            // It holds more of a generation than was stored from its own file: ship the rest.
            let Some(source) = Source::of(file, gzip) else {
                return false;
            };
            let h = self.cp.held.remove(j);
            tracing::info!(log = %h.logical, generation = h.generation, path = %path.display(),
                "found the rest of a rotated log file in a copy; shipping it");
            let len = source.content_len().unwrap_or(0);
            self.active.push(Active::resumed(&h, path, id, source, len));
            self.name(&logical, id, from);
            return true;
        }
        tracing::info!(path = %path.display(), of = %from.0, generation = from.1, gzip,
            "a copy of a followed log file; its bytes are stored once, under the original");
        let fingerprint = if gzip {
            head_fingerprint(&file)
        } else {
            Fingerprint::take(&file).ok()
        };
        let tail = if gzip {
            Window::take(&file, size)
        } else {
            Window::take(&file, held.len)
        };
        let (Some(fingerprint), Ok(tail)) = (fingerprint, tail) else {
            return false;
        };
        self.cp.held.push(Held {
            logical: from.0.clone(),
            generation: from.1,
            path,
            id,
            fingerprint,
            held,
            tail,
            ends: Vec::new(),
            copy: true,
            gzip,
            seen: size,
            gone: false,
        });
        self.name(&logical, id, from);
        true
    }

    /// Starts a new generation of `logical`: a file of its own, read from its first byte.
    fn start(&mut self, path: PathBuf, logical: String, id: FileId, file: File, size: u64) -> bool {
        let fingerprint = Fingerprint::take(&file).unwrap_or(Fingerprint { len: 0, crc: 0 });
        let generation = self.cp.next_generation(&logical);
        tracing::info!(log = %logical, path = %path.display(), generation, "following log file");
        self.cp.names.insert(
            logical.clone(),
            Occupant {
                id,
                generation,
                origin: true,
                from: logical.clone(),
                from_generation: generation,
            },
        );
        let mut a = Active::fresh(logical, generation, path, id, fingerprint, size, file);
        a.since_scan = self.scans;
        self.active.push(a);
        true
    }

    /// Records that path `logical` holds file `id`, whose bytes are those of generation `from`. A
    /// path that holds another generation than before gets a new generation of its own: a link
    /// to `from`, written to storage before the next chunk.
    fn name(&mut self, logical: &str, id: FileId, from: (String, u64)) {
        if let Some(o) = self.cp.names.get_mut(logical) {
            if o.from == from.0 && o.from_generation == from.1 {
                o.id = id;
                return;
            }
        }
        if from.0 == logical {
            // Back at its own path (a copy put in place of the file): the same generation.
            self.cp.names.insert(
                logical.to_string(),
                Occupant {
                    id,
                    generation: from.1,
                    origin: true,
                    from: from.0,
                    from_generation: from.1,
                },
            );
            return;
        }
        let generation = self.cp.next_generation(logical);
        tracing::info!(log = %logical, generation, from = %from.0, from_generation = from.1,
            "a rotated log file under a new name; linking it to where its bytes are stored");
        self.cp.links.push(Link {
            name: logical.to_string(),
            generation,
            from: from.0.clone(),
            from_generation: from.1,
        });
        self.cp.names.insert(
            logical.to_string(),
            Occupant {
                id,
                generation,
                origin: false,
                from: from.0,
                from_generation: from.1,
            },
        );
    }

    /// Writes the links recorded so far. Returns 0 (links carry no log bytes).
    async fn upload_links(&mut self) -> Result<u64, ShipError> {
        while let Some(link) = self.cp.links.first().cloned() {
            let key = link_key(
                &log_folder(&self.cfg.worker_prefix, &link.name),
                link.generation,
            );
            let body = serde_json::to_vec(&link).unwrap_or_default();
            match self.store.put(&key, PutPayload::from(body)).await {
                Ok(_) => {
                    self.cp.links.remove(0);
                    self.stored();
                    if !self.save() {
                        break;
                    }
                }
                Err(e) => {
                    self.failed(&key, &e);
                    break;
                }
            }
        }
        Ok(0)
    }

    fn read_all(&mut self) -> u64 {
        (0..self.active.len()).map(|i| self.read_one(i)).sum()
    }

    /// Reads what was appended to file `i`, up to the chunk size and the spool limit.
    fn read_one(&mut self, i: usize) -> u64 {
        let spool_used: u64 = self.active.iter().map(Active::held).sum();
        let budget = self.cfg.spool_max_bytes.saturating_sub(spool_used);
        let seen = self.active[i].t.seen_size;
        match self.active[i].read_more(self.cfg.chunk_bytes, budget) {
            Read::Bytes(n) => {
                if self.active[i].t.seen_size > seen {
                    self.sizes_unsaved = true;
                }
                self.stats.bytes_read.fetch_add(n, Ordering::Relaxed);
                n
            }
            Read::Truncated { .. } => {
                self.truncated(i);
                0
            }
        }
    }

    /// Ships the next chunk of file `i`. Returns the bytes stored, or `None` when storage failed
    /// (the chunk stays pending and is retried after the backoff).
    async fn ship_one(&mut self, i: usize) -> Result<Option<u64>, ShipError> {
        if self.active[i].pending.is_none() {
            let a = &mut self.active[i];
            let Some(cut) = a.cut(self.cfg.chunk_bytes) else {
                return Ok(Some(0));
            };
            let raw = cut.raw;
            let gz = tokio::task::spawn_blocking(move || compress(&raw))
                .await
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
            a.t.in_flight = Some(cut.end);
            a.pending = Some(Pending {
                end: cut.end,
                gz,
                prefix: cut.prefix,
                tail: cut.tail,
            });
            // Intent: recorded before the upload starts (the chunk waits in memory until it is).
            if !self.save() {
                return Ok(None);
            }
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
                self.active[i].complete();
                let n = name.end - name.start;
                self.stored();
                self.stats.bytes_shipped.fetch_add(n, Ordering::Relaxed);
                self.stats.chunks_shipped.fetch_add(1, Ordering::Relaxed);
                // Completion (when it cannot be recorded, a restart uploads the same key again).
                self.save();
                Ok(Some(n))
            }
            Err(e) => {
                self.failed(&key, &e);
                Ok(None)
            }
        }
    }

    /// An upload succeeded: storage works.
    fn stored(&mut self) {
        self.failures = 0;
        self.retry_at = None;
    }

    /// An upload failed: wait before the next one.
    fn failed(&mut self, key: &Path, e: &object_store::Error) {
        self.failures += 1;
        self.stats.upload_failures.fetch_add(1, Ordering::Relaxed);
        let wait = self.cfg.retry.delay(self.failures, Verdict::Transient);
        self.retry_at = Some(Instant::now() + wait);
        let backlog: u64 = self.active.iter().map(Active::held).sum();
        tracing::warn!(key = %key, error = %crate::storage::scrub(&e.to_string()), retry_in_ms = wait.as_millis() as u64,
            backlog_bytes = backlog, "log upload failed; will retry (nothing is dropped)");
    }

    /// Drops generations that are fully shipped and will not grow: rotated away and quiet, or
    /// truncated. What they hold is remembered, so the same bytes under another name are known.
    /// Returns whether any were dropped.
    fn retire(&mut self, flush: bool) -> bool {
        let before = self.active.len();
        let mut kept = Vec::with_capacity(before);
        for a in std::mem::take(&mut self.active) {
            let done = a.held() == 0
                && (a.closed
                    || (a.t.detached
                        && a.eof_since
                            .is_some_and(|s| flush || s.elapsed() >= RETIRE_AFTER)));
            if !done {
                kept.push(a);
                continue;
            }
            tracing::info!(log = %a.t.logical, generation = a.t.generation, bytes = a.t.shipped,
                "finished shipping a rotated log file");
            // A truncated generation's file now holds the next one: only its bytes are remembered.
            let gone = a.closed;
            self.cp.held.push(a.into_held(gone));
        }
        self.active = kept;
        self.active.len() != before
    }

    /// Whether the checkpoint on disk is up to date: it was, or a retry that is due now worked.
    fn saved_or_retried(&mut self) -> bool {
        if !self.unsaved {
            return true;
        }
        if self.save_retry_at.is_some_and(|t| Instant::now() < t) {
            return false;
        }
        self.save()
    }

    /// Writes the checkpoint. A failure (a full disk) is said once, counted, and retried with
    /// the backoff; meanwhile nothing is uploaded and reading goes on as during a storage outage.
    /// Returns whether it was written.
    fn save(&mut self) -> bool {
        match self.write_checkpoint() {
            Ok(()) => {
                if self.unsaved {
                    tracing::info!(state_dir = %self.cfg.state_dir.display(),
                        "the log checkpoint is saved again; log uploads resume");
                    self.stats.set_checkpoint_error(None);
                }
                self.unsaved = false;
                self.save_failures = 0;
                self.save_retry_at = None;
                true
            }
            Err(e) => {
                self.save_failures += 1;
                self.stats
                    .checkpoint_failures
                    .fetch_add(1, Ordering::Relaxed);
                let wait = self.cfg.retry.delay(self.save_failures, Verdict::Transient);
                self.save_retry_at = Some(Instant::now() + wait);
                if !self.unsaved {
                    tracing::warn!(error = %e,
                        "cannot save the log checkpoint; log uploads wait until it can be saved (reading goes on, nothing is dropped)");
                    self.stats.set_checkpoint_error(Some(e.to_string()));
                }
                self.unsaved = true;
                false
            }
        }
    }

    fn write_checkpoint(&mut self) -> Result<(), ShipError> {
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

/// The fingerprint of a gzip file's decompressed first bytes.
fn head_fingerprint(file: &File) -> Option<Fingerprint> {
    let mut head = Vec::with_capacity(FINGERPRINT_BYTES as usize);
    source::content(file, true)
        .ok()?
        .take(FINGERPRINT_BYTES)
        .read_to_end(&mut head)
        .ok()?;
    Some(Fingerprint::of(&head))
}

/// Reopens a tracked file after a restart: at its last path, renamed within the same folder, or
/// (truncated or compressed while the sidecar was down) the copy beside it that holds what was
/// stored and more.
fn reattach(t: &Tracked, legacy: bool) -> Option<(Source, PathBuf)> {
    let try_path = |p: &FsPath| -> Option<Source> {
        let f = open_read(p, false).ok()?;
        let meta = f.metadata().ok()?;
        if FileId::of(&meta) != t.id || !meta.is_file() {
            return None;
        }
        if t.gzip {
            // A gzip never changes, but its inode may be a deleted one's, reused: check content.
            let mut stream = source::content(&f, true).ok()?;
            let holds = identity::scan_prefixes(&mut *stream, &[t.shipped]).prefix(t.shipped)
                == Some(t.stored());
            drop(stream);
            return if holds { Source::gzip(f).ok()? } else { None };
        }
        // Files only grow: one smaller than a size it had was truncated, whatever it holds.
        let holds = meta.len() >= t.shipped.max(t.seen_size)
            && t.fingerprint.matches(&f).ok()?
            && (legacy || t.tail.matches(&f).ok()?);
        holds.then_some(Source::Plain(f))
    };
    if let Some(s) = try_path(&t.path) {
        return Some((s, t.path.clone()));
    }
    let dir = t.path.parent()?;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let p = entry.path();
        if let Some(s) = try_path(&p) {
            return Some((s, p));
        }
    }
    if legacy {
        return None;
    }
    // The file itself, wherever it is, no longer holds the generation (it was truncated, or it
    // is gone): the rest is in a copy, though the file may start the same way (a banner).
    recognize::find_continuation(&t.path, t.fingerprint, t.tail, Some(t.id)).map(|(s, p, _)| (s, p))
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

    /// A shipper for `dir/logs/app.log*` storing to `dir/store`.
    fn rotation_shipper(dir: &FsPath) -> (LogShipper, Arc<dyn ObjectStore>, Path) {
        glob_shipper(dir, "app.log*", 8 << 20)
    }

    /// A shipper for `dir/logs/<pattern>` storing to `dir/store` in chunks of `chunk_bytes`.
    fn glob_shipper(
        dir: &FsPath,
        pattern: &str,
        chunk_bytes: usize,
    ) -> (LogShipper, Arc<dyn ObjectStore>, Path) {
        let logs = dir.join("logs");
        let store_dir = dir.join("store");
        std::fs::create_dir_all(&logs).unwrap();
        std::fs::create_dir_all(&store_dir).unwrap();
        let store: Arc<dyn ObjectStore> =
            Arc::new(object_store::local::LocalFileSystem::new_with_prefix(&store_dir).unwrap());
        let glob = LogGlob::new(&format!("{}/{pattern}", logs.display())).unwrap();
        let prefix = Path::from("exp/worker-0");
        let mut cfg = LogConfig::new(vec![glob], prefix.clone(), "test".into(), dir.join("state"));
        cfg.chunk_bytes = chunk_bytes;
        (LogShipper::open(cfg, store.clone()).unwrap(), store, prefix)
    }

    #[tokio::test]
    async fn a_new_log_holding_only_the_banner_of_another_log_is_a_file_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let (mut shipper, _, _) = glob_shipper(dir.path(), "*.log", 8 << 20);
        let logs = dir.path().join("logs");
        let banner = vec![b'='; 4096];
        let with_banner = |tag: &str, n: usize| [banner.clone(), lines(tag, n)].concat();
        std::fs::write(logs.join("worker.log"), with_banner("worker", 2000)).unwrap();
        std::fs::write(logs.join("app.log"), with_banner("app", 10)).unwrap();
        shipper.tick(true).await.unwrap();
        // app.log is rotated out of the glob; the new one holds only the banner so far.
        std::fs::rename(logs.join("app.log"), logs.join("app.log.1")).unwrap();
        std::fs::write(logs.join("app.log"), &banner).unwrap();
        for _ in 0..3 {
            shipper.tick(true).await.unwrap();
        }
        let o = &shipper.cp.names["app.log"];
        assert!(
            o.origin && o.from == "app.log" && o.generation == 2,
            "a new generation of app.log, not a copy of worker.log: {o:?}"
        );
    }

    #[tokio::test]
    async fn a_held_file_whose_inode_is_reused_keeps_its_gzip_recognised() {
        let dir = tempfile::tempdir().unwrap();
        let (mut shipper, store, prefix) = rotation_shipper(dir.path());
        let logs = dir.path().join("logs");
        let first = lines("first", 2000);
        std::fs::write(logs.join("app.log"), &first).unwrap();
        shipper.tick(true).await.unwrap();
        // Rotated away and read to its end: only remembered now.
        std::fs::rename(logs.join("app.log"), logs.join("app.log.1")).unwrap();
        std::fs::write(logs.join("app.log"), lines("second", 10)).unwrap();
        for _ in 0..3 {
            shipper.tick(true).await.unwrap();
        }
        assert!(shipper.cp.held.iter().any(|h| h.generation == 1 && !h.gone));
        // logrotate compresses it and removes it, then writes the next copy, which the
        // filesystem gives the freed inode number.
        std::fs::write(logs.join("app.log.2.gz"), compress(&first)).unwrap();
        std::fs::remove_file(logs.join("app.log.1")).unwrap();
        std::fs::write(logs.join("app.log.1"), lines("third", 10)).unwrap();
        let reused = FileId::of(&std::fs::metadata(logs.join("app.log.1")).unwrap());
        for h in shipper.cp.held.iter_mut().filter(|h| h.generation == 1) {
            h.id = reused;
        }
        if let Some(o) = shipper.cp.names.get_mut("app.log.1") {
            o.id = reused;
        }
        for _ in 0..3 {
            shipper.tick(true).await.unwrap();
        }
        let gz_name = &shipper.cp.names["app.log.2.gz"];
        assert_eq!(
            (
                gz_name.origin,
                gz_name.from.as_str(),
                gz_name.from_generation
            ),
            (false, "app.log", 1),
            "the gzip is another name of the first generation"
        );
        let mut stored = Vec::new();
        crate::ship::reassemble::cat(
            &store,
            &log_folder(&prefix, "app.log.2.gz"),
            None,
            &mut stored,
        )
        .await
        .unwrap();
        assert!(
            stored == first,
            "logs cat of the gzip's name gives the first generation"
        );
    }

    #[tokio::test]
    async fn a_copy_given_the_previous_copys_inode_number_is_linked_to_its_own_generation() {
        let dir = tempfile::tempdir().unwrap();
        let (mut shipper, store, prefix) = rotation_shipper(dir.path());
        let logs = dir.path().join("logs");
        let log = logs.join("app.log");
        std::fs::write(&log, lines("first", 2000)).unwrap();
        shipper.tick(true).await.unwrap();
        std::fs::rename(&log, logs.join("app.log.1")).unwrap();
        let second = lines("second", 2000);
        std::fs::write(&log, &second).unwrap();
        for _ in 0..3 {
            shipper.tick(true).await.unwrap();
        }
        assert_eq!(shipper.cp.names["app.log.1"].from_generation, 1);
        // copytruncate: the old copy is gone, the new one is made and the log truncated; the
        // sidecar reads (and finds the truncation) before it next looks at the folder.
        std::fs::remove_file(logs.join("app.log.1")).unwrap();
        std::fs::copy(&log, logs.join("app.log.1")).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&log)
            .unwrap()
            .set_len(0)
            .unwrap();
        shipper.read_all();
        // The filesystem gave the new copy the old copy's inode number.
        let copy = FileId::of(&std::fs::metadata(logs.join("app.log.1")).unwrap());
        shipper.cp.names.get_mut("app.log.1").unwrap().id = copy;
        // The next pass, while the second generation is still read from its copy.
        shipper.tick(false).await.unwrap();
        assert_eq!(
            shipper.cp.names["app.log.1"].from_generation, 2,
            "app.log.1 now holds the second generation"
        );
        shipper.tick(true).await.unwrap();
        let mut stored = Vec::new();
        let folder = log_folder(&prefix, "app.log.1");
        let newest = shipper.cp.names["app.log.1"].generation;
        crate::ship::reassemble::cat(&store, &folder, Some(newest), &mut stored)
            .await
            .unwrap();
        assert!(stored == second);
    }

    /// What `logs cat` gives for `name`, all generations.
    async fn cat(store: &Arc<dyn ObjectStore>, prefix: &Path, name: &str) -> Vec<u8> {
        let mut stored = Vec::new();
        crate::ship::reassemble::cat(store, &log_folder(prefix, name), None, &mut stored)
            .await
            .unwrap();
        stored
    }

    /// Appends `bytes` to the file at `path`, as a writer does.
    fn append(path: &FsPath, bytes: &[u8]) {
        std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .unwrap()
            .write_all(bytes)
            .unwrap();
    }

    /// Fails, saying where they differ and what the shipper named, unless `stored` (what
    /// `app.log` holds in storage) is `expected`.
    #[track_caller]
    fn assert_stored(stored: &[u8], expected: &[u8], shipper: &LogShipper) {
        assert!(
            stored == expected,
            "stored {} bytes under app.log, expected {}; first difference at {:?}; names: {:#?}",
            stored.len(),
            expected.len(),
            stored.iter().zip(expected).position(|(a, b)| a != b),
            shipper.cp.names
        );
    }

    /// Ticks (draining) until nothing is read or held for a few passes.
    async fn until_idle(shipper: &mut LogShipper) {
        let mut idle = 0;
        for _ in 0..200 {
            let report = shipper.tick(true).await.unwrap();
            idle = if report.bytes_read == 0 && report.backlog == 0 {
                idle + 1
            } else {
                0
            };
            if idle == 5 {
                return;
            }
        }
        panic!("the shipper never went idle");
    }

    /// A shipper for `dir/logs/<pattern>` that has stored `app.log`, which holds only a 4 KiB
    /// banner so far; and the banner.
    async fn banner_stored(
        dir: &FsPath,
        pattern: &str,
    ) -> (LogShipper, Arc<dyn ObjectStore>, Path, Vec<u8>) {
        let (mut shipper, store, prefix) = glob_shipper(dir, pattern, 8 << 20);
        let banner = [vec![b'='; 4095], b"\n".to_vec()].concat();
        std::fs::write(dir.join("logs/app.log"), &banner).unwrap();
        shipper.tick(true).await.unwrap();
        assert_eq!(shipper.active[0].t.shipped, banner.len() as u64);
        (shipper, store, prefix, banner)
    }

    /// copytruncate as logrotate does it: the copy (its mtime the copy's time), then the
    /// truncation; the writer then starts again with `next`.
    fn copytruncate(log: &FsPath, copy: &FsPath, made: std::time::SystemTime, next: &[u8]) {
        std::fs::copy(log, copy).unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(copy).unwrap();
        f.set_modified(made).unwrap();
        let mut f = std::fs::OpenOptions::new().write(true).open(log).unwrap();
        f.set_len(0).unwrap();
        f.write_all(next).unwrap();
    }

    /// Every generation starts with the same 4 KiB banner. The sidecar has read only the banner
    /// of a generation when the writer goes on and copytruncate rotates it (once, or twice with
    /// the first copy renamed), and the next generation is written past that offset before the
    /// sidecar looks again: the log file keeps its inode, its first KiB and the bytes before the
    /// read offset. The copies tell: they hold what was stored and more, which the log no longer
    /// holds. With `read_first`, the shipper reads the rewritten log (taking the next
    /// generation's bytes for this one's) before it looks at the folder again, as when the
    /// rotation comes between a pass's look and its read.
    async fn banner_rotations_between_two_passes(rotations: usize, read_first: bool) {
        let dir = tempfile::tempdir().unwrap();
        let (mut shipper, store, prefix, banner) = banner_stored(dir.path(), "app.log*").await;
        let logs = dir.path().join("logs");
        let log = logs.join("app.log");

        let t0 = std::time::SystemTime::now() - Duration::from_secs(60);
        let mut expected = banner.clone();
        let mut generations = Vec::new();
        for r in 0..=rotations {
            let body = lines(&format!("gen{r}"), 3000 + 500 * r);
            append(&log, &body);
            expected.extend_from_slice(&body);
            generations.push([banner.clone(), body].concat());
            if r == rotations {
                break;
            }
            // logrotate's `rotate N`: the older copy moves up a number first.
            if logs.join("app.log.1").exists() {
                std::fs::rename(logs.join("app.log.1"), logs.join("app.log.2")).unwrap();
            }
            let made = t0 + Duration::from_secs(10 * (r as u64 + 1));
            copytruncate(&log, &logs.join("app.log.1"), made, &banner);
            expected.extend_from_slice(&banner);
        }
        if read_first {
            assert!(shipper.read_all() > 0);
        }
        until_idle(&mut shipper).await;
        assert!(shipper.losses().is_empty(), "{:?}", shipper.losses());
        let stored = cat(&store, &prefix, "app.log").await;
        assert_stored(&stored, &expected, &shipper);
        // Each copy is a name of its own generation, not a file of its own.
        for (n, g) in (1..=rotations).zip(generations.iter().rev().skip(1)) {
            let name = format!("app.log.{n}");
            let o = &shipper.cp.names[&name];
            assert!(!o.origin && o.from == "app.log", "{name}: {o:?}");
            let mut held = Vec::new();
            let folder = log_folder(&prefix, &name);
            crate::ship::reassemble::cat(&store, &folder, Some(o.generation), &mut held)
                .await
                .unwrap();
            assert!(&held == g, "{name} holds another generation");
        }
    }

    #[tokio::test]
    async fn one_copytruncate_after_only_the_banner_was_read_continues_from_the_copy() {
        banner_rotations_between_two_passes(1, false).await;
    }

    #[tokio::test]
    async fn a_copytruncate_read_through_before_the_copy_is_seen_is_read_again_from_the_copy() {
        banner_rotations_between_two_passes(1, true).await;
    }

    #[tokio::test]
    async fn two_copytruncates_after_only_the_banner_was_read_store_each_generation_in_order() {
        banner_rotations_between_two_passes(2, false).await;
    }

    /// The shipper has read only the banner when copytruncate rotates and the writer goes on
    /// past it; it looks again while logrotate compresses the copy (`delaycompress`, at the next
    /// rotation): the copy and its gzip are both there, made at different times. They hold one
    /// generation, not two.
    #[tokio::test]
    async fn a_copy_and_its_gzip_seen_together_after_only_the_banner_was_read_are_one_generation() {
        let dir = tempfile::tempdir().unwrap();
        let (mut shipper, store, prefix, banner) = banner_stored(dir.path(), "app.log*").await;
        let logs = dir.path().join("logs");
        let log = logs.join("app.log");
        let first = lines("first", 3000);
        append(&log, &first);
        let made = std::time::SystemTime::now() - Duration::from_secs(30);
        copytruncate(&log, &logs.join("app.log.1"), made, &banner);
        let second = lines("second", 2000);
        append(&log, &second);
        let copy = std::fs::read(logs.join("app.log.1")).unwrap();
        std::fs::write(logs.join("app.log.1.gz"), compress(&copy)).unwrap();
        until_idle(&mut shipper).await;
        assert!(shipper.losses().is_empty(), "{:?}", shipper.losses());
        let expected = [banner.clone(), first.clone(), banner.clone(), second].concat();
        let stored = cat(&store, &prefix, "app.log").await;
        assert_stored(&stored, &expected, &shipper);
        for name in ["app.log.1", "app.log.1.gz"] {
            let o = &shipper.cp.names[name];
            assert!(
                !o.origin && o.from == "app.log" && o.from_generation == 1,
                "{name}: {o:?}"
            );
        }
    }

    /// The sidecar (`--logs app.log`, no rotated names) has stored only the banner of a
    /// generation and read more when it is killed; while it is down, copytruncate rotates and the
    /// writer starts the next generation, shorter so far than what was read. At restart the log
    /// itself, truncated, is not where the rest of the generation is, though it starts with the
    /// same banner: the copy beside it is.
    #[tokio::test]
    async fn a_restart_after_copytruncate_reads_the_rest_from_the_copy_not_the_truncated_log() {
        let dir = tempfile::tempdir().unwrap();
        let (mut shipper, store, prefix, banner) = banner_stored(dir.path(), "app.log").await;
        let logs = dir.path().join("logs");
        let log = logs.join("app.log");
        let first = lines("first", 3000);
        append(&log, &first);
        assert!(shipper.read_all() > 0);
        assert!(shipper.save());
        drop(shipper); // kill -9: what was read and not stored is read again
        let made = std::time::SystemTime::now() - Duration::from_secs(1);
        copytruncate(&log, &logs.join("app.log.1"), made, &banner);
        let second = lines("second", 500);
        append(&log, &second);
        let (mut shipper, _, _) = glob_shipper(dir.path(), "app.log", 8 << 20);
        until_idle(&mut shipper).await;
        assert!(shipper.losses().is_empty(), "{:?}", shipper.losses());
        let expected = [banner.clone(), first, banner, second].concat();
        assert_stored(&cat(&store, &prefix, "app.log").await, &expected, &shipper);
    }

    /// As above, but the shipper looks at the folder between the copy and the truncation: the
    /// copy is recorded as holding more than was read while the log still holds it too; once the
    /// log is truncated and written again past the banner, the copy's last bytes are no longer
    /// where it ends in the log.
    #[tokio::test]
    async fn a_copy_seen_before_the_truncation_holds_the_rest_once_the_log_is_written_again() {
        let dir = tempfile::tempdir().unwrap();
        let (mut shipper, store, prefix, banner) = banner_stored(dir.path(), "app.log*").await;
        let logs = dir.path().join("logs");
        let log = logs.join("app.log");
        let first = lines("first", 3000);
        append(&log, &first);
        std::fs::copy(&log, logs.join("app.log.1")).unwrap();
        assert!(shipper.scan());
        assert!(
            shipper.cp.held.iter().any(|h| h.copy && h.generation == 1),
            "the copy is recorded as one of the first generation"
        );
        let second = lines("second", 4000);
        let mut f = std::fs::OpenOptions::new().write(true).open(&log).unwrap();
        f.set_len(0).unwrap();
        f.write_all(&[banner.clone(), second.clone()].concat())
            .unwrap();
        until_idle(&mut shipper).await;
        assert!(shipper.losses().is_empty(), "{:?}", shipper.losses());
        let expected = [banner.clone(), first, banner, second].concat();
        assert!(cat(&store, &prefix, "app.log").await == expected);
    }

    /// The shipper has stored a whole generation when copytruncate rotates twice before it
    /// looks again (it was busy, or starved of CPU): the first copy is renamed `app.log.2`, the
    /// second, `app.log.1`, holds a generation nobody read under the log's name, and the log
    /// holds a third. The second copy holds none of the stored bytes (with `banner`, none past
    /// the banner every generation starts with): it is the log's generation between the two,
    /// stored as such, not a file of its own.
    async fn a_whole_generation_rotated_away_between_two_passes(banner: bool) {
        let dir = tempfile::tempdir().unwrap();
        let (mut shipper, store, prefix) = rotation_shipper(dir.path());
        let logs = dir.path().join("logs");
        let log = logs.join("app.log");
        let banner = if banner {
            [vec![b'='; 4095], b"\n".to_vec()].concat()
        } else {
            Vec::new()
        };
        let first = [banner.clone(), lines("first", 3000)].concat();
        std::fs::write(&log, &first).unwrap();
        until_idle(&mut shipper).await;
        let t0 = std::time::SystemTime::now() - Duration::from_secs(60);
        copytruncate(&log, &logs.join("app.log.1"), t0, &banner);
        let second = lines("second", 2500);
        append(&log, &second);
        std::fs::rename(logs.join("app.log.1"), logs.join("app.log.2")).unwrap();
        let t1 = t0 + Duration::from_secs(10);
        copytruncate(&log, &logs.join("app.log.1"), t1, &banner);
        let third = lines("third", 500);
        append(&log, &third);
        until_idle(&mut shipper).await;
        assert!(shipper.losses().is_empty(), "{:?}", shipper.losses());
        let second = [banner.clone(), second].concat();
        let expected = [first.clone(), second.clone(), banner, third].concat();
        assert_stored(&cat(&store, &prefix, "app.log").await, &expected, &shipper);
        for (name, generation) in [("app.log.2", 1), ("app.log.1", 2)] {
            let o = &shipper.cp.names[name];
            assert!(
                !o.origin && o.from == "app.log" && o.from_generation == generation,
                "{name}: {o:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_generation_rotated_away_unread_is_stored_as_the_logs_not_as_a_file_of_its_own() {
        a_whole_generation_rotated_away_between_two_passes(false).await;
    }

    #[tokio::test]
    async fn a_generation_rotated_away_unread_behind_a_shared_banner_is_stored_as_the_logs() {
        a_whole_generation_rotated_away_between_two_passes(true).await;
    }

    /// What becomes of the older copy in [`a_copy_recorded_before_its_truncation`].
    #[derive(Clone, Copy, PartialEq)]
    enum Older {
        /// Renamed `app.log.2`.
        Renamed,
        /// Compressed to `app.log.2.gz` and deleted.
        Compressed,
        /// As `Compressed`, and the filesystem gives the newer copy the older one's inode number
        /// (tmpfs often does): the older copy's record names a file that holds the newer one.
        CompressedInodeReused,
    }

    /// Only the banner is stored; the shipper sees the copy of the generation while the log
    /// still holds it (so records it as holding that generation), then copytruncate finishes and
    /// rotates once more before the next pass, the older copy becoming `older`. The newer copy
    /// also holds the stored banner and more, which the log no longer holds, but the rest of the
    /// generation is in the older copy (or its gzip, recognised in the same pass): the newer one
    /// is the generation after it.
    async fn a_copy_recorded_before_its_truncation(older: Older) {
        let dir = tempfile::tempdir().unwrap();
        let (mut shipper, store, prefix, banner) = banner_stored(dir.path(), "app.log*").await;
        let logs = dir.path().join("logs");
        let log = logs.join("app.log");
        let first = lines("first", 3000);
        append(&log, &first);
        let t0 = std::time::SystemTime::now() - Duration::from_secs(60);
        std::fs::copy(&log, logs.join("app.log.1")).unwrap();
        std::fs::File::options()
            .write(true)
            .open(logs.join("app.log.1"))
            .unwrap()
            .set_modified(t0)
            .unwrap();
        assert!(shipper.scan());
        assert!(
            shipper.cp.held.iter().any(|h| h.copy && h.generation == 1),
            "the copy is recorded as one of the first generation"
        );
        let mut f = std::fs::OpenOptions::new().write(true).open(&log).unwrap();
        f.set_len(0).unwrap();
        f.write_all(&banner).unwrap();
        let second = lines("second", 2500);
        append(&log, &second);
        if older == Older::Renamed {
            std::fs::rename(logs.join("app.log.1"), logs.join("app.log.2")).unwrap();
        } else {
            let copy = std::fs::read(logs.join("app.log.1")).unwrap();
            std::fs::write(logs.join("app.log.2.gz"), compress(&copy)).unwrap();
            std::fs::remove_file(logs.join("app.log.1")).unwrap();
        }
        let made = t0 + Duration::from_secs(10);
        copytruncate(&log, &logs.join("app.log.1"), made, &banner);
        let third = lines("third", 500);
        append(&log, &third);
        if older == Older::CompressedInodeReused {
            let id = FileId::of(&std::fs::metadata(logs.join("app.log.1")).unwrap());
            for h in shipper.cp.held.iter_mut().filter(|h| h.copy) {
                h.id = id;
            }
            shipper.cp.names.get_mut("app.log.1").unwrap().id = id;
        }
        until_idle(&mut shipper).await;
        assert!(shipper.losses().is_empty(), "{:?}", shipper.losses());
        let expected = [
            banner.clone(),
            first,
            banner.clone(),
            second,
            banner.clone(),
            third,
        ]
        .concat();
        assert_stored(&cat(&store, &prefix, "app.log").await, &expected, &shipper);
    }

    #[tokio::test]
    async fn a_copy_seen_before_its_truncation_holds_the_rest_when_another_rotation_follows() {
        a_copy_recorded_before_its_truncation(Older::Renamed).await;
    }

    #[tokio::test]
    async fn a_copy_recorded_before_its_truncation_then_compressed_leaves_the_rest_to_its_gzip() {
        a_copy_recorded_before_its_truncation(Older::Compressed).await;
    }

    #[tokio::test]
    async fn a_copy_recorded_before_its_truncation_is_not_the_next_copy_given_its_inode_number() {
        a_copy_recorded_before_its_truncation(Older::CompressedInodeReused).await;
    }

    /// The sidecar starts beside files logrotate (`rotate 3`, `copytruncate`, `compress`,
    /// `delaycompress`) made before it: `app.log` holds only its banner, `app.log.1` the last
    /// generation and `app.log.2.gz` the one before, each stored as a file of its own. At the
    /// next rotation `app.log.1` is compressed to `app.log.2.gz`, a new inode whose content
    /// starts with the banner as every generation does: it is that file under a new name, not
    /// the rest of `app.log`'s generation (which starts the same way and was truncated), and
    /// nothing is stored twice. With `read_first`, the first pass has read the three files;
    /// without, it has only found them.
    async fn rotation_of_files_there_at_start(read_first: bool) {
        let dir = tempfile::tempdir().unwrap();
        let (mut shipper, store, prefix) = rotation_shipper(dir.path());
        let logs = dir.path().join("logs");
        let log = logs.join("app.log");
        let banner = [vec![b'='; 4095], b"\n".to_vec()].concat();
        let earlier = [banner.clone(), lines("earlier", 1000)].concat();
        let last = [banner.clone(), lines("last", 1000)].concat();
        std::fs::write(&log, &banner).unwrap();
        std::fs::write(logs.join("app.log.1"), &last).unwrap();
        // A gzip there at start is stored as it is, compressed.
        let earlier_gz = compress(&earlier).to_vec();
        std::fs::write(logs.join("app.log.2.gz"), &earlier_gz).unwrap();
        if read_first {
            shipper.tick(true).await.unwrap();
        } else {
            assert!(shipper.scan());
        }
        let first = lines("first", 3000);
        append(&log, &first);
        std::fs::rename(logs.join("app.log.2.gz"), logs.join("app.log.3.gz")).unwrap();
        std::fs::write(logs.join("app.log.2.gz"), compress(&last)).unwrap();
        std::fs::remove_file(logs.join("app.log.1")).unwrap();
        let made = std::time::SystemTime::now() - Duration::from_secs(1);
        copytruncate(&log, &logs.join("app.log.1"), made, &banner);
        until_idle(&mut shipper).await;
        assert!(shipper.losses().is_empty(), "{:?}", shipper.losses());
        let stored = cat(&store, &prefix, "app.log").await;
        let expected = [banner.clone(), first.clone(), banner.clone()].concat();
        assert_stored(&stored, &expected, &shipper);
        // Each rotated name holds, at its newest generation, what is on disk there now.
        for (name, content) in [
            ("app.log.1", [banner.clone(), first].concat()),
            ("app.log.2.gz", last.clone()),
            ("app.log.3.gz", earlier_gz.clone()),
        ] {
            let o = &shipper.cp.names[name];
            let mut held = Vec::new();
            let folder = log_folder(&prefix, name);
            crate::ship::reassemble::cat(&store, &folder, Some(o.generation), &mut held)
                .await
                .unwrap();
            assert!(
                held == content,
                "{name} holds {} bytes, not the {} on disk: {o:?}",
                held.len(),
                content.len()
            );
        }
        // Every byte once: what was there at start under its own names, app.log's since.
        let listed = crate::ship::reassemble::ls(&store, &prefix).await.unwrap();
        let total: u64 = listed.iter().map(|l| l.bytes).sum();
        assert_eq!(
            total as usize,
            earlier_gz.len() + last.len() + expected.len(),
            "{listed:#?}"
        );
    }

    #[tokio::test]
    async fn a_file_there_at_start_compressed_at_the_next_rotation_keeps_its_bytes() {
        rotation_of_files_there_at_start(true).await;
    }

    #[tokio::test]
    async fn a_file_found_at_start_and_compressed_before_it_was_read_keeps_its_bytes() {
        rotation_of_files_there_at_start(false).await;
    }

    #[tokio::test]
    async fn a_copytruncate_the_reader_lags_behind_is_caught_by_the_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let (mut shipper, store, prefix) = glob_shipper(dir.path(), "*.log", 64 << 10);
        let logs = dir.path().join("logs");

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

        until_idle(&mut shipper).await;
        assert!(shipper.losses().is_empty(), "{:?}", shipper.losses());
        let stored = cat(&store, &prefix, "app.log").await;
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
