//! Mirroring TensorBoard event files to storage, so `tensorboard --logdir <URL>/<experiment>` works,
//! at the cost of the files' growth.
//!
//! Each event file under a `--tfevents` folder is stored under [`layout`]'s name for it as
//! segments of whole records ([`plan`]): closed segments are written once; only a small open
//! tail is ever sent again. Segments are named so that they sort in file order, and TensorBoard,
//! which reads every event file of a run folder in name order, reads the file's records in order.
//! Every upload ends at a record boundary, so the stored copy is never torn; [`upload`] streams a
//! segment from the file with bounded memory. After every upload the checkpoint ([`state`]) is
//! written atomically, and no upload starts before it is: so a restart sends again at most the
//! segment it was uploading. A checkpoint that cannot be written (a full state folder) is retried
//! with the backoff while uploads wait; reading goes on, nothing is dropped.
//!
//! This module never parses events (that is [`tfevents`](crate::tfevents)) and never prints.

mod follow;
pub mod layout;
pub mod plan;
pub mod state;
pub mod upload;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::path::Path;
use object_store::ObjectStore;

use self::follow::{Follower, Seen};
use self::layout::Layout;
use self::plan::{next_upload, uploaded, Limits, Upload};
use self::state::MirrorState;
use self::upload::{UploadError, Uploader};
use super::logs::ShipError;
use crate::retry::{Outage, RetryPolicy, Verdict};
use crate::tfevents::discover::{self, split_segment_name, Scope, Search};

pub use self::layout::TFEVENTS_DIR;
pub use self::state::MIRROR_FILE;

/// The open segment is closed once it holds this many bytes.
pub const DEFAULT_TAIL_BYTES: u64 = 1 << 20;
/// The most one segment holds (unless one record is larger).
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;

/// How the mirror behaves.
#[derive(Debug, Clone)]
pub struct MirrorConfig {
    /// Folders searched (recursively) for files whose name contains `tfevents`.
    pub roots: Vec<PathBuf>,
    /// A folder searched for the event files a command writes there of its own accord, stored
    /// beside the roots' (as if it were one more root).
    pub search: Option<Search>,
    /// `<prefix>/<experiment>/<worker>` inside the store.
    pub worker_prefix: Path,
    pub state_dir: PathBuf,
    /// Least time between two uploads of one growing file's tail.
    pub interval: Duration,
    pub retry: RetryPolicy,
    /// The open segment is sent again with each upload until it holds this many bytes; then it
    /// is closed. Larger: fewer objects, more bytes sent again for a slowly growing file.
    pub tail_bytes: u64,
    /// The most bytes one segment holds: what a restart may send again.
    pub segment_bytes: u64,
}

impl Default for MirrorConfig {
    fn default() -> Self {
        MirrorConfig {
            roots: Vec::new(),
            search: None,
            worker_prefix: Path::default(),
            state_dir: PathBuf::new(),
            interval: Duration::from_secs(10),
            retry: RetryPolicy::default(),
            tail_bytes: DEFAULT_TAIL_BYTES,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
        }
    }
}

/// A followed file and when its tail was last sent.
struct Mirrored {
    follower: Follower,
    last_upload: Option<Instant>,
}

/// Mirrors event files. See the module docs. Invariant: `files` holds every file discovered so
/// far, keyed by its stored name; `saved` is what the checkpoint on disk says, plus the files not
/// seen yet in this run, unless `unsaved` is failing, and then no upload starts.
pub struct TfeventsMirror {
    cfg: MirrorConfig,
    limits: Limits,
    layout: Layout,
    uploader: Uploader,
    saved: MirrorState,
    files: BTreeMap<String, Mirrored>,
    failures: u32,
    retry_at: Option<Instant>,
    /// Checkpoint writes that fail, while they do (the files' states after the last upload are
    /// then only in memory).
    unsaved: Arc<Outage>,
    totals: MirrorReport,
}

/// What one pass did (or, from [`TfeventsMirror::totals`], every pass so far).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MirrorReport {
    pub uploads: u64,
    /// Bytes sent to storage.
    pub bytes: u64,
    /// Bytes of whole records not yet in storage.
    pub backlog: u64,
}

impl TfeventsMirror {
    /// Loads the checkpoint; files are found on the first pass.
    pub fn open(
        cfg: MirrorConfig,
        store: Arc<dyn ObjectStore>,
    ) -> Result<TfeventsMirror, ShipError> {
        match std::fs::create_dir_all(&cfg.state_dir) {
            Ok(()) => {}
            // No room to make it (a disk already full): the first checkpoint save makes it, and
            // uploads wait for that save as they do when the folder fills later.
            Err(error) if crate::fsutil::no_room(&error) => {}
            Err(error) => {
                return Err(ShipError::Checkpoint {
                    dir: cfg.state_dir.clone(),
                    error,
                })
            }
        }
        let saved = MirrorState::load(&cfg.state_dir, cfg.worker_prefix.as_ref());
        let mut all_roots = cfg.roots.clone();
        all_roots.extend(cfg.search.iter().map(|s| s.root.clone()));
        let layout = Layout::new(&cfg.worker_prefix, &all_roots);
        let uploader = Uploader::new(store, layout.staging_key());
        let mut mirror = TfeventsMirror {
            limits: Limits::new(cfg.tail_bytes, cfg.segment_bytes),
            cfg,
            layout,
            uploader,
            saved,
            files: BTreeMap::new(),
            failures: 0,
            retry_at: None,
            unsaved: Arc::default(),
            totals: MirrorReport::default(),
        };
        mirror.discover();
        Ok(mirror)
    }

    /// Checkpoint writes that fail, for the health endpoints.
    pub fn checkpoint_outage(&self) -> Arc<Outage> {
        self.unsaved.clone()
    }

    /// How many event files are mirrored.
    pub fn files(&self) -> usize {
        self.files.len()
    }

    /// Whether any whole record is not yet stored.
    pub fn has_backlog(&self) -> bool {
        self.files
            .values()
            .any(|m| m.follower.backlog() > 0 || m.follower.state.purge)
    }

    /// Everything sent since this mirror was opened.
    pub fn totals(&self) -> MirrorReport {
        MirrorReport {
            backlog: self.files.values().map(|m| m.follower.backlog()).sum(),
            ..self.totals
        }
    }

    /// One pass: find new files, read each to its last whole record, and upload what is due:
    /// full segments at once, a file's tail at most every `interval` (every tail when `flush`).
    pub async fn tick(&mut self, flush: bool) -> Result<MirrorReport, ShipError> {
        self.discover();
        let mut report = MirrorReport::default();
        for (name, m) in self.files.iter_mut() {
            match m.follower.advance() {
                Seen::Same | Seen::Gone => {}
                Seen::Replaced => {
                    tracing::warn!(file = %m.follower.path.display(), stored = %name,
                        "event file was replaced by another; mirroring the new one from its start");
                    m.follower.restart(self.limits);
                    m.last_upload = None;
                }
            }
        }
        let now = Instant::now();
        // An upload starts only once the checkpoint on disk says what is stored so far.
        let saved = self.unsaved.failing().is_none() || (self.unsaved.due() && self.save());
        if saved && self.retry_at.is_none_or(|t| now >= t) {
            let names: Vec<String> = self.files.keys().cloned().collect();
            'files: for name in names {
                loop {
                    match self.step(&name, flush, now).await {
                        Ok(Some(bytes)) => {
                            report.uploads += u64::from(bytes > 0);
                            report.bytes += bytes;
                            if !self.save() {
                                break 'files;
                            }
                        }
                        Ok(None) => break,
                        // The file changed under us: the next pass looks at it again.
                        Err(e @ UploadError::Read { .. }) => {
                            tracing::warn!(file = %name, error = %e,
                                "cannot read event file; will look again");
                            continue 'files;
                        }
                        Err(e) => {
                            self.failed(&name, &e);
                            break 'files;
                        }
                    }
                }
            }
        }
        self.totals.uploads += report.uploads;
        self.totals.bytes += report.bytes;
        report.backlog = self.files.values().map(|m| m.follower.backlog()).sum();
        Ok(report)
    }

    /// Does the next storage operation due for one file (deleting the segments of a replaced
    /// file, or an upload); returns the bytes it sent, or `None` when nothing is due.
    async fn step(
        &mut self,
        name: &str,
        flush: bool,
        now: Instant,
    ) -> Result<Option<u64>, UploadError> {
        let interval = self.cfg.interval;
        let Some(m) = self.files.get_mut(name).filter(|m| !m.follower.is_gone()) else {
            return Ok(None);
        };
        if m.follower.state.purge {
            let old = self.stored_segments(name).await?;
            self.uploader.delete(&old).await?;
            if let Some(m) = self.files.get_mut(name) {
                m.follower.state.purge = false;
            }
            return Ok(Some(0));
        }
        let due = flush
            || m.last_upload
                .is_none_or(|t| now.duration_since(t) >= interval);
        let f = &mut m.follower;
        let Some(up) = next_upload(
            &mut f.state.stored,
            &mut f.cuts,
            f.boundary,
            self.limits,
            due,
        ) else {
            return Ok(None);
        };
        let Upload { start, end, closes } = up;
        let key = self.layout.segment_key(name, start);
        self.uploader.upload(&f.path, start, end, &key).await?;
        tracing::debug!(file = %f.path.display(), %key, start, end, closes, "event file segment stored");
        uploaded(&mut f.state.stored, &mut f.cuts, up);
        f.remember_start();
        m.last_upload = Some(Instant::now());
        self.failures = 0;
        self.retry_at = None;
        Ok(Some(end - start))
    }

    /// The stored segments of file `name` (of whatever file was at its path before).
    async fn stored_segments(&self, name: &str) -> Result<Vec<Path>, UploadError> {
        let (folder, file) = self.layout.folder(name);
        let listed = self.uploader.list(&folder).await?;
        Ok(listed
            .into_iter()
            .filter(|key| {
                key.filename()
                    .is_some_and(|n| split_segment_name(n).0 == file)
            })
            .collect())
    }

    /// Storage failed: wait before the next try, longer each time.
    fn failed(&mut self, name: &str, error: &UploadError) {
        let shown = crate::storage::scrub(&error.to_string());
        self.failures += 1;
        let wait = self.cfg.retry.delay(self.failures, Verdict::Transient);
        self.retry_at = Some(Instant::now() + wait);
        tracing::warn!(file = %name, error = %shown, retry_in_ms = wait.as_millis() as u64,
            "event file upload failed; will retry");
    }

    fn discover(&mut self) {
        let every = Scope::default();
        let roots = (self.cfg.roots.iter().map(|r| (r, &every)))
            .chain(self.cfg.search.iter().map(|s| (&s.root, &s.scope)));
        for (index, (root, scope)) in roots.enumerate() {
            let Ok(found) = discover::discover_in(root, scope) else {
                continue;
            };
            for ev in found {
                let name = self.layout.name(index, &ev.relative);
                if name.is_empty() || self.files.contains_key(&name) {
                    continue;
                }
                let state = self.saved.files.get(&name).cloned().unwrap_or_default();
                tracing::info!(file = %ev.path.display(), stored = %name, "mirroring event file");
                self.files.insert(
                    name,
                    Mirrored {
                        follower: Follower::new(ev.path, state, self.limits),
                        last_upload: None,
                    },
                );
            }
        }
    }

    /// Writes the checkpoint. A failure (a full state folder) is said once, counted, and retried
    /// with the backoff; meanwhile nothing is uploaded. Returns whether it was written.
    fn save(&mut self) -> bool {
        for (name, m) in &self.files {
            self.saved
                .files
                .insert(name.clone(), m.follower.state.clone());
        }
        match self.saved.save(&self.cfg.state_dir) {
            Ok(()) => {
                if self.unsaved.succeeded() {
                    tracing::info!(state_dir = %self.cfg.state_dir.display(),
                        "the tf.events checkpoint is saved again; event file uploads resume");
                }
                true
            }
            Err(e) => {
                let error = ShipError::Checkpoint {
                    dir: self.cfg.state_dir.clone(),
                    error: e,
                };
                if self.unsaved.failed(&self.cfg.retry, &error.to_string()) {
                    tracing::warn!(%error,
                        "cannot save the tf.events checkpoint; event file uploads wait until it can be saved (nothing is dropped)");
                }
                false
            }
        }
    }
}

#[cfg(test)]
mod tests;
