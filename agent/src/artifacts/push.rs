//! `push`: one save of a folder, idempotent and resumable.
//!
//! Steps: walk the folder ([`walk`](super::walk)); hash every file (the state's cache skips files
//! whose size, mtime and inode are unchanged); compare with the latest complete save, and stop if
//! the content is the same (no new save); choose the save number — the unfinished save the state
//! file names if it is still the highest and has no manifest, else one more than the highest;
//! store each file (skipping files the state says are stored whole, after checking the object's
//! size; copying server-side a file whose sha256 the previous save already holds); write
//! `manifest.json` last. The state file is written after every batch of stored files.
//!
//! Many small files go up `concurrency` at a time; large files one after another, each with
//! `concurrency` parts in flight, so memory stays bounded. This module never prints.

use std::collections::HashMap;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use super::manifest::{sha256_hex, FileEntry, Manifest, Skipped, MANIFEST_FILE};
use super::state::{Known, PushState};
use super::upload::{self, UploadOptions};
use super::walk::{self, LocalFile};
use super::{saves, ArtifactsError, ARTIFACTS_DIR};
use crate::storage::{Service, StorageError};

/// Where and how to push. Invariant: `concurrency`, `part_size` and `attempts` are at least 1.
#[derive(Clone)]
pub struct PushConfig {
    pub store: Arc<dyn ObjectStore>,
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
    let root = dir.to_path_buf();
    let walked = tokio::task::spawn_blocking(move || walk::walk(&root))
        .await
        .map_err(|e| ArtifactsError::Task(e.to_string()))??;
    let base = cfg.base();
    let shown_base = cfg.shown_base();
    let canonical = std::fs::canonicalize(dir).map_err(|error| ArtifactsError::Read {
        path: dir.to_path_buf(),
        error,
    })?;
    let state_path = PushState::path(&cfg.state_dir, &canonical, &shown_base);
    let mut state = PushState::load(&state_path, &shown_base);
    let save_state = |state: &PushState| {
        state
            .save(&state_path)
            .map_err(|error| ArtifactsError::State {
                path: state_path.clone(),
                error,
            })
    };

    // Hash, in parallel, with the cache.
    let hashed: Vec<(LocalFile, String)> = futures::stream::iter(walked.files)
        .map(|f| {
            let cached = state.cached_sha(&f.rel, &f.stamp).map(str::to_string);
            let attempts = cfg.attempts;
            async move {
                if let Some(sha) = cached {
                    return Ok((f, sha));
                }
                tokio::task::spawn_blocking(move || {
                    let (sha, stamp) = upload::hash_stable(&f.path, attempts)?;
                    Ok::<_, ArtifactsError>((LocalFile { stamp, ..f }, sha))
                })
                .await
                .map_err(|e| ArtifactsError::Task(e.to_string()))?
            }
        })
        .buffer_unordered(cfg.concurrency.max(1))
        .try_collect()
        .await?;
    let mut hashed = hashed;
    hashed.sort_by(|a, b| a.0.rel.cmp(&b.0.rel));
    let planned = Manifest::new(
        0,
        hashed
            .iter()
            .map(|(f, sha)| FileEntry {
                path: f.rel.clone(),
                size: f.stamp.size,
                sha256: sha.clone(),
            })
            .collect(),
        walked.skipped.clone(),
    );

    let stored = saves::list(&cfg.store, cfg.service, &base).await?;
    if let Some((n, latest, bytes)) = &stored.latest {
        if latest.content_digest() == planned.content_digest() {
            tracing::info!(save = n, "content equals the latest save; nothing to store");
            // Keep the digests as a cache, but no save is unfinished any more.
            let mut kept = state.clone();
            kept.save = None;
            remember(&mut kept, &hashed);
            for k in kept.files.values_mut() {
                k.stored = false;
            }
            save_state(&kept)?;
            return Ok(PushOutcome {
                save: *n,
                url: format!("{shown_base}/{n}/"),
                manifest_sha256: sha256_hex(bytes),
                files: latest.files.len() as u64,
                bytes: latest.bytes(),
                skipped: latest.skipped.clone(),
                unchanged: true,
                resumed: false,
                sent: 0,
                copied: 0,
                already_stored: 0,
            });
        }
    }

    // Which save.
    let highest = stored.highest.unwrap_or(0);
    let resume = state
        .save
        .filter(|s| *s == highest && *s > 0 && !stored.is_complete(*s));
    let n = match resume {
        Some(s) => s,
        None => {
            for k in state.files.values_mut() {
                k.stored = false;
            }
            highest + 1
        }
    };
    state.save = Some(n);
    remember(&mut state, &hashed);
    save_state(&state)?;
    tracing::info!(
        save = n,
        resumed = resume.is_some(),
        files = hashed.len(),
        "pushing artifacts"
    );

    // Files the previous complete save holds, by digest: copied server-side instead of sent.
    let previous: HashMap<&str, &str> = stored
        .latest
        .as_ref()
        .map(|(_, m, _)| {
            m.files
                .iter()
                .map(|f| (f.sha256.as_str(), f.path.as_str()))
                .collect()
        })
        .unwrap_or_default();
    let previous_n = stored.latest.as_ref().map(|(p, _, _)| *p);

    let opts = UploadOptions {
        multipart_above: cfg.multipart_above,
        part_size: cfg.part_size.max(1),
        concurrency: cfg.concurrency.max(1),
        attempts: cfg.attempts.max(1),
    };
    let mut entries: Vec<FileEntry> = Vec::with_capacity(hashed.len());
    let (mut sent, mut copied, mut already) = (0u64, 0u64, 0u64);
    let (small, large): (Vec<_>, Vec<_>) = hashed
        .iter()
        .partition(|(f, _)| f.stamp.size <= cfg.multipart_above);
    let mut last_save = Instant::now();
    let mut unsaved = 0usize;
    for (group, parallel) in [(small, cfg.concurrency.max(1)), (large, 1)] {
        // Decided before the stream starts, so the state can be updated while it runs.
        let jobs: Vec<_> = group
            .into_iter()
            .map(|(f, sha)| {
                let done_before = state.is_stored(&f.rel, &f.stamp, sha);
                let copy_from = previous_n
                    .and_then(|p| previous.get(sha.as_str()).map(|rel| key(&base, p, rel)));
                (f, sha, key(&base, n, &f.rel), done_before, copy_from)
            })
            .collect();
        let mut results = futures::stream::iter(jobs)
            .map(|(f, sha, target, done_before, copy_from)| {
                let opts = &opts;
                async move {
                    let how = store_one(cfg, f, sha, &target, done_before, copy_from, opts).await?;
                    Ok::<_, ArtifactsError>((f.rel.clone(), how))
                }
            })
            .buffer_unordered(parallel);
        while let Some(result) = results.next().await {
            let (rel, how) = result?;
            match how.0 {
                How::Sent => sent += 1,
                How::Copied => copied += 1,
                How::AlreadyStored => already += 1,
            }
            let stored = how.1;
            entries.push(FileEntry {
                path: rel.clone(),
                size: stored.size,
                sha256: stored.sha256.clone(),
            });
            state.files.insert(
                rel,
                Known {
                    stamp: stored.stamp,
                    sha256: stored.sha256,
                    stored: true,
                },
            );
            unsaved += 1;
            // Batched: a state write is an fsync; at worst the last batch is sent again.
            if unsaved >= 32 || last_save.elapsed() >= Duration::from_millis(500) {
                save_state(&state)?;
                unsaved = 0;
                last_save = Instant::now();
            }
        }
    }
    save_state(&state)?;

    // The manifest, last: its presence is what makes the save complete.
    let manifest = Manifest::new(n, entries, walked.skipped);
    let bytes = manifest.to_bytes();
    let manifest_key = base.clone().join(n.to_string()).join(MANIFEST_FILE);
    cfg.store
        .put(&manifest_key, PutPayload::from(bytes.clone()))
        .await
        .map_err(|e| StorageError::request(cfg.service, manifest_key.to_string(), &e))?;
    state.save = None;
    for k in state.files.values_mut() {
        k.stored = false;
    }
    save_state(&state)?;
    tracing::info!(
        save = n,
        files = manifest.files.len(),
        bytes = manifest.bytes(),
        sent,
        copied,
        already_stored = already,
        "artifacts saved"
    );
    Ok(PushOutcome {
        save: n,
        url: format!("{shown_base}/{n}/"),
        manifest_sha256: sha256_hex(&bytes),
        files: manifest.files.len() as u64,
        bytes: manifest.bytes(),
        skipped: manifest.skipped,
        unchanged: false,
        resumed: resume.is_some(),
        sent,
        copied,
        already_stored: already,
    })
}

/// Puts the fresh digests into the state's cache, keeping the `stored` mark of a file whose
/// stamp and digest are unchanged, and forgetting files that are gone.
fn remember(state: &mut PushState, hashed: &[(LocalFile, String)]) {
    let present: std::collections::HashSet<&str> =
        hashed.iter().map(|(f, _)| f.rel.as_str()).collect();
    state.files.retain(|rel, _| present.contains(rel.as_str()));
    for (f, sha) in hashed {
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
/// it was hashed), else uploaded.
async fn store_one(
    cfg: &PushConfig,
    f: &LocalFile,
    sha: &str,
    target: &Path,
    done_before: bool,
    copy_from: Option<Path>,
    opts: &UploadOptions,
) -> Result<(How, upload::Stored), ArtifactsError> {
    let as_hashed = upload::Stored {
        sha256: sha.to_string(),
        size: f.stamp.size,
        stamp: f.stamp,
    };
    let unchanged = || walk::Stamp::of(&f.path).is_ok_and(|s| s == f.stamp);
    if done_before {
        match cfg.store.head(target).await {
            Ok(meta) if meta.size == f.stamp.size && unchanged() => {
                return Ok((How::AlreadyStored, as_hashed))
            }
            Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(StorageError::request(cfg.service, target.to_string(), &e).into()),
        }
    }
    if let Some(from) = copy_from {
        match cfg.store.copy(&from, target).await {
            Ok(()) if unchanged() => return Ok((How::Copied, as_hashed)),
            Ok(()) => {}
            Err(e) => {
                tracing::debug!(from = %from, error = %e, "server-side copy failed; uploading instead")
            }
        }
    }
    let stored = upload::upload(&cfg.store, cfg.service, &f.path, target, opts).await?;
    Ok((How::Sent, stored))
}
