//! `push`: one save of a folder, idempotent and resumable.
//!
//! Steps: walk the folder ([`walk`](super::walk)); list the saves; hash every file the latest
//! complete save could already hold, i.e. one of a size it has (the state's cache skips files
//! whose size, mtime and inode are unchanged); compare with the latest complete save, and stop if
//! the content is the same (no new save); choose the save number — the unfinished save the state
//! file names if it is still the highest and has no manifest, else one more than the highest;
//! store each file (skipping files the state says are stored whole, after checking the object's
//! size; copying server-side a file whose sha256 the previous save already holds); write
//! `manifest.json` last. The state file is written after every batch of stored files. A file no
//! earlier save can hold is hashed by the upload that sends it, so a fresh push reads it once.
//!
//! Many small files go up `concurrency` at a time; large files one after another, each with
//! `concurrency` parts in flight, so memory stays bounded. A large file's multipart upload is
//! journaled in the state file part by part (where the store allows it, see [`upload`]), so a
//! killed push continues it instead of sending the file again. This module never prints.

use std::collections::HashMap;
use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use object_store::multipart::MultipartStore;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use super::manifest::{
    object_name, sha256_hex, FileEntry, Manifest, Parts, Skipped, MANIFEST_FILE,
};
use super::state::{Known, PushState, Unfinished};
use super::upload::{self, Resumable, UploadOptions};
use super::walk::{self, LocalFile};
use super::{saves, ArtifactsError, ARTIFACTS_DIR};
use crate::storage::{Service, StorageError};

/// Where and how to push. Invariant: `concurrency`, `part_size` and `attempts` are at least 1.
#[derive(Clone)]
pub struct PushConfig {
    pub store: Arc<dyn ObjectStore>,
    /// The same store's multipart interface, when its uploads can be continued by a later
    /// process; without it a killed large file is sent again from its start.
    pub parts: Option<Arc<dyn MultipartStore>>,
    pub service: Service,
    /// The worker's prefix (`<storage path>/<experiment>/<worker>`); saves go below its
    /// `artifacts/`.
    pub worker_prefix: Path,
    /// The redacted URL of the worker's prefix, for messages, state and the metastore.
    pub shown: String,
    pub state_dir: PathBuf,
    pub concurrency: usize,
    pub multipart_above: u64,
    pub part_size: usize,
    /// Reads of a changing file before the push fails.
    pub attempts: u32,
}

impl PushConfig {
    /// Defaults for everything but where to push: 8 at once, 8 MiB parts above 16 MiB, 3 reads.
    pub fn new(
        store: Arc<dyn ObjectStore>,
        service: Service,
        worker_prefix: Path,
        shown: String,
        state_dir: PathBuf,
    ) -> PushConfig {
        PushConfig {
            store,
            parts: None,
            service,
            worker_prefix,
            shown,
            state_dir,
            concurrency: 8,
            multipart_above: 16 << 20,
            part_size: 8 << 20,
            attempts: 3,
        }
    }

    fn base(&self) -> Path {
        self.worker_prefix.clone().join(ARTIFACTS_DIR)
    }

    fn shown_base(&self) -> String {
        format!("{}/{ARTIFACTS_DIR}", self.shown.trim_end_matches('/'))
    }
}

/// What a push did. Invariant: `sent + copied + already_stored == files` for a new save.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushOutcome {
    pub save: u64,
    /// The redacted URL of the save folder, ending in `/`.
    pub url: String,
    /// Hex sha256 of the stored manifest's bytes.
    pub manifest_sha256: String,
    pub files: u64,
    pub bytes: u64,
    pub skipped: Vec<Skipped>,
    /// True when the content equals the latest complete save and nothing was stored.
    pub unchanged: bool,
    /// True when an unfinished save left by an earlier push was continued.
    pub resumed: bool,
    /// Files uploaded by this push.
    pub sent: u64,
    /// Files copied server-side from the previous save.
    pub copied: u64,
    /// Files an earlier, interrupted push had already stored whole.
    pub already_stored: u64,
    /// Parts of large files (and their bytes) an earlier, interrupted push had already stored.
    pub reused_parts: u64,
    pub reused_bytes: u64,
}

/// The key of a relative path in save `n`.
fn key(base: &Path, n: u64, rel: &str) -> Path {
    under(&base.clone().join(n.to_string()), rel)
}

/// The key of a manifest's relative path (`/`-separated) below `prefix`.
pub(crate) fn under(prefix: &Path, rel: &str) -> Path {
    rel.split('/').fold(prefix.clone(), |p, part| p.join(part))
}

/// Pushes `dir` as described in the module docs.
pub async fn push(dir: &FsPath, cfg: &PushConfig) -> Result<PushOutcome, ArtifactsError> {
    let (mut push, walked) = Push::start(dir, cfg).await?;
    let stored = saves::list(&cfg.store, cfg.service, &push.base).await?;
    let hashed = push.pre_hash(walked.files, &stored).await?;
    if let Some(outcome) = push.unchanged(&stored, &hashed, &walked.skipped).await? {
        return Ok(outcome);
    }
    let (n, resumed) = push.claim(&stored, &hashed).await?;
    let (entries, tally) = push.store_files(n, &hashed, &stored).await?;
    push.write_manifest(n, Manifest::new(n, entries, walked.skipped), tally, resumed)
        .await
}

/// One push in progress, phase by phase. Invariant: after each phase, the state file at
/// `state_path` says what `state` says.
struct Push<'a> {
    cfg: &'a PushConfig,
    /// `<worker prefix>/artifacts`.
    base: Path,
    shown_base: String,
    state_path: PathBuf,
    state: PushState,
    /// The last write of the state file failed (see [`write_state`]).
    unkept: AtomicBool,
}

/// The walked folder's files, each with its sha256 when it was hashed before the uploads.
type Hashes = Vec<(LocalFile, Option<String>)>;

impl<'a> Push<'a> {
    /// Walks the folder and loads the state a killed push of it left.
    async fn start(
        dir: &FsPath,
        cfg: &'a PushConfig,
    ) -> Result<(Push<'a>, walk::Walked), ArtifactsError> {
        let root = dir.to_path_buf();
        let walked = tokio::task::spawn_blocking(move || walk::walk(&root))
            .await
            .map_err(|e| ArtifactsError::Task(e.to_string()))??;
        let (state_path, shown_base) = state_location(dir, cfg)?;
        let state = PushState::load(&state_path, &shown_base);
        let push = Push {
            cfg,
            base: cfg.base(),
            shown_base,
            state_path,
            state,
            unkept: AtomicBool::new(false),
        };
        Ok((push, walked))
    }

    fn save_state(&self) {
        write_state(&self.state, &self.state_path, &self.unkept);
    }

    /// Hashes only the files the previous complete save may already hold (one of the same size
    /// there): their digests decide "unchanged" and server-side copies. Any other file must be
    /// sent anyway, and its digest comes from the bytes the upload reads, so a fresh push reads
    /// every byte once, not twice. Sorted by path.
    async fn pre_hash(
        &self,
        files: Vec<LocalFile>,
        stored: &saves::Saves,
    ) -> Result<Hashes, ArtifactsError> {
        let cfg = self.cfg;
        let sizes_before: std::collections::HashSet<u64> = stored
            .latest
            .as_ref()
            .map(|(_, m, _)| m.files.iter().map(|f| f.size).collect())
            .unwrap_or_default();
        let mut hashed: Hashes = futures::stream::iter(files)
            .map(|f| {
                let cached = self.state.cached_sha(&f.rel, &f.stamp).map(str::to_string);
                let wanted = sizes_before.contains(&f.stamp.size);
                let attempts = cfg.attempts;
                async move {
                    if cached.is_some() || !wanted {
                        return Ok((f, cached));
                    }
                    tokio::task::spawn_blocking(move || {
                        let (sha, stamp) = upload::hash_stable(&f.path, attempts)?;
                        Ok::<_, ArtifactsError>((LocalFile { stamp, ..f }, Some(sha)))
                    })
                    .await
                    .map_err(|e| ArtifactsError::Task(e.to_string()))?
                }
            })
            .buffer_unordered(cfg.concurrency.max(1))
            .try_collect()
            .await?;
        hashed.sort_by(|a, b| a.0.rel.cmp(&b.0.rel));
        Ok(hashed)
    }

    /// When the content equals the latest complete save, records that no save is unfinished and
    /// returns its outcome: nothing is stored. A file without a digest has a size the latest save
    /// does not hold, so then the content differs.
    async fn unchanged(
        &mut self,
        stored: &saves::Saves,
        hashed: &Hashes,
        skipped: &[Skipped],
    ) -> Result<Option<PushOutcome>, ArtifactsError> {
        let Some((n, latest, bytes)) = &stored.latest else {
            return Ok(None);
        };
        let planned = hashed
            .iter()
            .map(|(f, sha)| {
                sha.as_ref()
                    .map(|sha| FileEntry::new(f.rel.clone(), f.stamp.size, sha.clone(), None))
            })
            .collect::<Option<Vec<_>>>()
            .map(|files| Manifest::new(0, files, skipped.to_vec()));
        if planned.is_none_or(|p| latest.content_digest() != p.content_digest()) {
            return Ok(None);
        }
        tracing::info!(save = n, "content equals the latest save; nothing to store");
        // Keep the digests as a cache, but no save is unfinished any more.
        self.state.save = None;
        self.state.claim = None;
        forget_uploads(self.cfg, &mut self.state).await;
        remember(&mut self.state, hashed);
        for k in self.state.files.values_mut() {
            k.stored = false;
        }
        self.save_state();
        Ok(Some(PushOutcome {
            save: *n,
            url: format!("{}/{n}/", self.shown_base),
            manifest_sha256: sha256_hex(bytes),
            files: latest.files.len() as u64,
            bytes: latest.bytes(),
            skipped: latest.skipped.clone(),
            unchanged: true,
            resumed: false,
            sent: 0,
            copied: 0,
            already_stored: 0,
            reused_parts: 0,
            reused_bytes: 0,
        }))
    }

    /// Chooses the save: the unfinished one this push claimed before it was interrupted, if it
    /// is still the highest, else the next number no other push has claimed. Returns it and
    /// whether it continues an interrupted push; the state names it from now on.
    async fn claim(
        &mut self,
        stored: &saves::Saves,
        hashed: &Hashes,
    ) -> Result<(u64, bool), ArtifactsError> {
        let cfg = self.cfg;
        let highest = stored.highest.unwrap_or(0);
        let mut resume = self
            .state
            .save
            .filter(|s| *s == highest && *s > 0 && !stored.is_complete(*s));
        if let (Some(s), Some(token)) = (resume, self.state.claim.clone()) {
            if !saves::claim(&cfg.store, cfg.service, &self.base, s, &token).await? {
                tracing::info!(
                    save = s,
                    "the unfinished save belongs to another push; starting a new one"
                );
                resume = None;
            }
        }
        let n = match resume {
            Some(s) => s,
            None => {
                for k in self.state.files.values_mut() {
                    k.stored = false;
                }
                forget_uploads(cfg, &mut self.state).await;
                let (n, token) = claim_next(cfg, &self.base, highest).await?;
                self.state.claim = Some(token);
                n
            }
        };
        self.state.save = Some(n);
        remember(&mut self.state, hashed);
        self.save_state();
        tracing::info!(
            save = n,
            resumed = resume.is_some(),
            files = hashed.len(),
            "pushing artifacts"
        );
        Ok((n, resume.is_some()))
    }

    /// Stores every file into save `n`: copied server-side when the previous complete save holds
    /// its digest, else sent; many small files at once, then one large file at a time with its
    /// parts in parallel, journaled as they land. Returns the manifest's entries.
    async fn store_files(
        &mut self,
        n: u64,
        hashed: &Hashes,
        stored: &saves::Saves,
    ) -> Result<(Vec<FileEntry>, Tally), ArtifactsError> {
        let cfg = self.cfg;
        let previous: HashMap<&str, &FileEntry> = stored
            .latest
            .as_ref()
            .map(|(_, m, _)| m.files.iter().map(|f| (f.sha256.as_str(), f)).collect())
            .unwrap_or_default();
        let prev = stored.latest.as_ref().map(|(p, _, _)| (*p, &previous));
        let opts = UploadOptions {
            multipart_above: cfg.multipart_above,
            part_size: cfg.part_size.max(1),
            concurrency: cfg.concurrency.max(1),
            attempts: cfg.attempts.max(1),
        };
        let mut entries: Vec<FileEntry> = Vec::with_capacity(hashed.len());
        let mut tally = Tally::default();
        let (small, large): (Vec<_>, Vec<_>) = hashed
            .iter()
            .partition(|(f, _)| f.stamp.size <= cfg.multipart_above);
        // Decided before any upload starts, so the state can be updated while they run.
        let small_jobs: Vec<Job> = small
            .into_iter()
            .map(|fs| make_job(&self.state, fs, &self.base, n, prev))
            .collect();
        let mut batch = Batch::default();
        let mut results = futures::stream::iter(small_jobs)
            .map(|j| {
                let opts = &opts;
                async move {
                    let how = store_one(cfg, &j, opts, None).await?;
                    Ok::<_, ArtifactsError>((j.file.rel.clone(), how))
                }
            })
            .buffer_unordered(cfg.concurrency.max(1));
        while let Some(result) = results.next().await {
            let (rel, (how, stored)) = result?;
            tally.count(&how, &stored);
            record_stored(&mut self.state, &mut entries, rel, stored);
            if batch.due() {
                self.save_state();
            }
        }
        drop(results);
        for fs in large {
            let j = make_job(&self.state, fs, &self.base, n, prev);
            let rel = j.file.rel.clone();
            let left = self.state.uploads.get(&rel).cloned();
            let (state, state_path, unkept) = (&mut self.state, &self.state_path, &self.unkept);
            let mut journal = |u: Option<&Unfinished>| {
                match u {
                    Some(u) => state.uploads.insert(rel.clone(), u.clone()),
                    None => state.uploads.remove(&rel),
                };
                write_state(state, state_path, unkept);
                Ok(())
            };
            let resumable = cfg.parts.clone().map(|parts| Resumable {
                parts,
                left,
                journal: &mut journal,
            });
            let (how, stored) = store_one(cfg, &j, &opts, resumable).await?;
            tally.count(&how, &stored);
            record_stored(&mut self.state, &mut entries, rel, stored);
            self.save_state();
        }
        self.save_state();
        Ok((entries, tally))
    }

    /// Writes the manifest, last: its presence is what makes the save complete.
    async fn write_manifest(
        mut self,
        n: u64,
        manifest: Manifest,
        tally: Tally,
        resumed: bool,
    ) -> Result<PushOutcome, ArtifactsError> {
        let cfg = self.cfg;
        let bytes = manifest.to_bytes();
        let manifest_key = self.base.clone().join(n.to_string()).join(MANIFEST_FILE);
        cfg.store
            .put(&manifest_key, PutPayload::from(bytes.clone()))
            .await
            .map_err(|e| StorageError::request(cfg.service, manifest_key.to_string(), &e))?;
        self.state.save = None;
        self.state.claim = None;
        for k in self.state.files.values_mut() {
            k.stored = false;
        }
        self.save_state();
        tracing::info!(
            save = n,
            files = manifest.files.len(),
            bytes = manifest.bytes(),
            sent = tally.sent,
            copied = tally.copied,
            already_stored = tally.already,
            reused_parts = tally.reused_parts,
            "artifacts saved"
        );
        Ok(PushOutcome {
            save: n,
            url: format!("{}/{n}/", self.shown_base),
            manifest_sha256: sha256_hex(&bytes),
            files: manifest.files.len() as u64,
            bytes: manifest.bytes(),
            skipped: manifest.skipped,
            unchanged: false,
            resumed,
            sent: tally.sent,
            copied: tally.copied,
            already_stored: tally.already,
            reused_parts: tally.reused_parts,
            reused_bytes: tally.reused_bytes,
        })
    }
}

/// The push state file of `dir` for `cfg`'s destination, and that destination as the state
/// names it.
fn state_location(dir: &FsPath, cfg: &PushConfig) -> Result<(PathBuf, String), ArtifactsError> {
    let shown_base = cfg.shown_base();
    let canonical = std::fs::canonicalize(dir).map_err(|error| ArtifactsError::Read {
        path: dir.to_path_buf(),
        error,
    })?;
    Ok((
        PushState::path(&cfg.state_dir, &canonical, &shown_base),
        shown_base,
    ))
}

/// The save an interrupted push of `dir` left unfinished, and how many of its files are stored
/// whole, as the push state says (the next push of `dir` continues it while it is the highest).
pub fn unfinished(dir: &FsPath, cfg: &PushConfig) -> Option<(u64, usize)> {
    let (path, shown_base) = state_location(dir, cfg).ok()?;
    let state = PushState::load(&path, &shown_base);
    let stored = state.files.values().filter(|k| k.stored).count();
    Some((state.save?, stored))
}

/// Writes the push state file. A push goes on when it cannot (a full or read-only state folder):
/// the file only lets a killed push continue the same save, and the save is what must not be
/// lost. `unkept` holds whether the last write failed, so that a failure is reported once, and a
/// write that works again is reported too.
fn write_state(state: &PushState, path: &FsPath, unkept: &AtomicBool) {
    match state.save(path) {
        Ok(()) => {
            if unkept.swap(false, Ordering::Relaxed) {
                tracing::info!(path = %path.display(), "the push state is written again");
            }
        }
        Err(error) => {
            if !unkept.swap(true, Ordering::Relaxed) {
                tracing::warn!(path = %path.display(), %error,
                    "cannot write the push state; the push goes on, but if it is stopped before it ends the next push makes a new save (free space in --state-dir)");
            }
        }
    }
}

/// Claims the first save number above `highest` (as listed a moment ago) that no other push has
/// claimed since; returns it with the token that marks the claim as this push's.
async fn claim_next(
    cfg: &PushConfig,
    base: &Path,
    highest: u64,
) -> Result<(u64, String), ArtifactsError> {
    let token = hex::encode(rand::random::<[u8; 16]>());
    let mut n = highest + 1;
    while !saves::claim(&cfg.store, cfg.service, base, n, &token).await? {
        tracing::info!(
            save = n,
            "another push claimed this save number; taking the next"
        );
        n += 1;
    }
    Ok((n, token))
}

/// One file to store in the save. A file not hashed beforehand has no `hashed` part and is
/// always sent.
struct Job<'a> {
    file: &'a LocalFile,
    target: Path,
    hashed: Option<Hashed<'a>>,
}

/// What is known of a file hashed before the uploads. Invariant: `done_before` and `copy_from`
/// were decided from the state and the previous save before any upload of this push started;
/// `copy_parts` are the part digests the previous save lists for the object at `copy_from`.
struct Hashed<'a> {
    sha: &'a str,
    done_before: bool,
    copy_from: Option<Path>,
    copy_parts: Option<&'a Parts>,
}

/// The job for one file of save `n`; `previous` is the latest complete save's number and its
/// files by digest.
fn make_job<'a>(
    state: &PushState,
    (file, sha): &'a (LocalFile, Option<String>),
    base: &Path,
    n: u64,
    previous: Option<(u64, &HashMap<&str, &'a FileEntry>)>,
) -> Job<'a> {
    Job {
        hashed: sha.as_deref().map(|sha| {
            let from = previous.and_then(|(p, files)| files.get(sha).map(|e| (p, *e)));
            Hashed {
                sha,
                done_before: state.is_stored(&file.rel, &file.stamp, sha),
                copy_from: from.map(|(p, e)| key(base, p, e.object())),
                copy_parts: from.and_then(|(_, e)| e.parts()),
            }
        }),
        target: key(base, n, &object_name(&file.rel)),
        file,
    }
}

/// What the push did, counted as files are stored.
#[derive(Default)]
struct Tally {
    sent: u64,
    copied: u64,
    already: u64,
    reused_parts: u64,
    reused_bytes: u64,
}

impl Tally {
    fn count(&mut self, how: &How, stored: &upload::Stored) {
        match how {
            How::Sent => self.sent += 1,
            How::Copied => self.copied += 1,
            How::AlreadyStored => self.already += 1,
        }
        self.reused_parts += stored.reused_parts;
        self.reused_bytes += stored.reused_bytes;
    }
}

/// When the state is written after small files: every 32 files or 500 ms, since a state write is
/// an fsync; at worst the last batch is sent again.
struct Batch {
    unsaved: usize,
    last: Instant,
}

impl Default for Batch {
    fn default() -> Self {
        Batch {
            unsaved: 0,
            last: Instant::now(),
        }
    }
}

impl Batch {
    fn due(&mut self) -> bool {
        self.unsaved += 1;
        if self.unsaved >= 32 || self.last.elapsed() >= Duration::from_millis(500) {
            self.unsaved = 0;
            self.last = Instant::now();
            return true;
        }
        false
    }
}

/// Marks `rel` as stored whole in the save, with the digest of the bytes stored.
fn record_stored(
    state: &mut PushState,
    entries: &mut Vec<FileEntry>,
    rel: String,
    stored: upload::Stored,
) {
    entries.push(FileEntry::new(
        rel.clone(),
        stored.size,
        stored.sha256.clone(),
        stored.parts,
    ));
    state.files.insert(
        rel,
        Known {
            stamp: stored.stamp,
            sha256: stored.sha256,
            stored: true,
        },
    );
}

/// Aborts (best effort) and forgets the unfinished uploads of an earlier save, which a new save
/// will not continue: their keys name the old save number.
async fn forget_uploads(cfg: &PushConfig, state: &mut PushState) {
    let uploads = std::mem::take(&mut state.uploads);
    let Some(parts) = &cfg.parts else { return };
    for u in uploads.into_values() {
        let key = Path::from(u.key.as_str());
        if let Err(e) = parts.abort_multipart(&key, &u.upload_id).await {
            tracing::debug!(key = %key, error = %e, "cannot abort an old multipart upload; the store's lifecycle rules remove it");
        }
    }
}

/// Puts the fresh digests into the state's cache, keeping the `stored` mark of a file whose
/// stamp and digest are unchanged, and forgetting files that are gone. A file not hashed yet
/// keeps no entry: its digest is recorded when it is stored.
fn remember(state: &mut PushState, hashed: &[(LocalFile, Option<String>)]) {
    let known: std::collections::HashSet<&str> = hashed
        .iter()
        .filter(|(_, sha)| sha.is_some())
        .map(|(f, _)| f.rel.as_str())
        .collect();
    state.files.retain(|rel, _| known.contains(rel.as_str()));
    for (f, sha) in hashed {
        let Some(sha) = sha else { continue };
        let stored = state.is_stored(&f.rel, &f.stamp, sha);
        state.files.insert(
            f.rel.clone(),
            Known {
                stamp: f.stamp,
                sha256: sha.clone(),
                stored,
            },
        );
    }
}

/// How one file of a save came to be stored. Invariant: `AlreadyStored` only when an earlier
/// push of the same save stored exactly these bytes (state record, object size, unchanged stamp).
enum How {
    Sent,
    Copied,
    AlreadyStored,
}

/// Stores one file: skipped if an earlier push stored it whole (and the object has its size),
/// copied from the previous save if that holds the same digest (and the file did not change since
/// it was hashed), else uploaded. A large file that is not uploaded gets its part digests from
/// the previous save's manifest, or else from reading the local file, whose stamp says it holds
/// the stored bytes.
async fn store_one(
    cfg: &PushConfig,
    job: &Job<'_>,
    opts: &UploadOptions,
    resumable: Option<Resumable<'_>>,
) -> Result<(How, upload::Stored), ArtifactsError> {
    let (f, target) = (job.file, &job.target);
    if let Some(hashed) = &job.hashed {
        let as_hashed = |parts: Option<Parts>| async move {
            let parts = match parts {
                Some(p) => Some(p),
                None if f.stamp.size > opts.multipart_above => {
                    let (path, part_size, stamp) = (f.path.clone(), opts.part_size, f.stamp);
                    tokio::task::spawn_blocking(move || {
                        upload::part_digests(&path, part_size, &stamp)
                    })
                    .await
                    .map_err(|e| ArtifactsError::Task(e.to_string()))??
                }
                None => None,
            };
            Ok::<_, ArtifactsError>(upload::Stored {
                sha256: hashed.sha.to_string(),
                size: f.stamp.size,
                parts,
                stamp: f.stamp,
                reused_parts: 0,
                reused_bytes: 0,
            })
        };
        let unchanged = || walk::Stamp::of(&f.path).is_ok_and(|s| s == f.stamp);
        if hashed.done_before {
            match cfg.store.head(target).await {
                Ok(meta) if meta.size == f.stamp.size && unchanged() => {
                    return Ok((How::AlreadyStored, as_hashed(None).await?))
                }
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => {
                    return Err(StorageError::request(cfg.service, target.to_string(), &e).into())
                }
            }
        }
        if let Some(from) = &hashed.copy_from {
            match cfg.store.copy(from, target).await {
                Ok(()) if unchanged() => {
                    return Ok((How::Copied, as_hashed(hashed.copy_parts.cloned()).await?))
                }
                Ok(()) => {}
                Err(e) => {
                    tracing::debug!(from = %from, error = %e, "server-side copy failed; uploading instead")
                }
            }
        }
    }
    let stored = upload::upload(&cfg.store, cfg.service, &f.path, target, opts, resumable).await?;
    Ok((How::Sent, stored))
}

#[cfg(test)]
impl PushConfig {
    /// A push to the worker `jobs/e/w` of `store` (an in-memory one, in tests).
    pub(crate) fn for_tests(store: Arc<dyn ObjectStore>, state_dir: PathBuf) -> PushConfig {
        let shown = "mem://jobs/e/w".to_string();
        PushConfig::new(
            store,
            Service::Local,
            Path::from("jobs/e/w"),
            shown,
            state_dir,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    #[tokio::test]
    async fn files_hashed_only_by_their_upload_get_their_true_digest_and_compare_equal_later() {
        let dir = tempfile::tempdir().unwrap();
        let (src, state_a, state_b) = (
            dir.path().join("out"),
            dir.path().join("a"),
            dir.path().join("b"),
        );
        std::fs::create_dir_all(src.join("ckpt")).unwrap();
        std::fs::write(src.join("ckpt/model.bin"), vec![7u8; 3000]).unwrap();
        std::fs::write(src.join("config.json"), b"{}").unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let cfg = |state: &FsPath| PushConfig::for_tests(store.clone(), state.to_path_buf());
        // No save yet: nothing is hashed before the uploads, whose digests go in the manifest.
        let first = push(&src, &cfg(&state_a)).await.unwrap();
        assert_eq!((first.save, first.sent), (1, 2));
        let (_, manifest, _) = saves::list(&store, Service::Local, &cfg(&state_a).base())
            .await
            .unwrap()
            .latest
            .unwrap();
        assert_eq!(
            manifest.file("ckpt/model.bin").unwrap().sha256,
            sha256_hex(&vec![7u8; 3000])
        );
        assert_eq!(
            manifest.file("config.json").unwrap().sha256,
            sha256_hex(b"{}")
        );
        // Without the first push's cache, same sizes mean hashing first: the content is unchanged.
        let again = push(&src, &cfg(&state_b)).await.unwrap();
        assert!(again.unchanged, "{again:?}");
        // A file of a new size is sent; the other one is copied from save 1, not sent.
        std::fs::write(src.join("config.json"), b"{\"lr\": 1}").unwrap();
        let next = push(&src, &cfg(&state_b)).await.unwrap();
        assert_eq!((next.save, next.sent, next.copied), (2, 1, 1), "{next:?}");
    }

    #[tokio::test]
    async fn a_number_another_push_claimed_after_the_listing_is_passed_over() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let cfg = PushConfig::for_tests(store.clone(), PathBuf::from("/nonexistent"));
        let base = cfg.base();
        // Another push listed the same (empty) folder and claimed save 1 first.
        assert!(saves::claim(&store, Service::Local, &base, 1, "other")
            .await
            .unwrap());
        let (n, token) = claim_next(&cfg, &base, 0).await.unwrap();
        assert_eq!(n, 2);
        // Each push still holds its own claim; a claim is never taken over.
        assert!(saves::claim(&store, Service::Local, &base, 2, &token)
            .await
            .unwrap());
        assert!(!saves::claim(&store, Service::Local, &base, 1, &token)
            .await
            .unwrap());
        assert!(saves::claim(&store, Service::Local, &base, 1, "other")
            .await
            .unwrap());
    }
}
