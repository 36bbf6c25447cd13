//! Where a worker's saves go, and pushing several folders there one after the other: what
//! `artifacts push`, `exec --artifacts` and a sidecar's `--artifacts` share.

use std::num::NonZeroUsize;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use object_store::multipart::MultipartStore;
use object_store::path::Path;
use object_store::ObjectStore;
use url::Url;

use super::push::{push, unfinished, PushConfig, PushOutcome};
use super::restore::{restore, Restored, Saves};
use super::{ArtifactsError, ARTIFACTS_DIR};
use crate::job::JobIdentity;
use crate::storage::{self, Service, StoreOptions};

/// S3 refuses parts under 5 MiB (but the last one).
pub const MIN_PART_SIZE: u64 = 5 << 20;

/// How artifacts go up. Invariant: `concurrency >= 1`; `part_size` is raised to
/// [`MIN_PART_SIZE`] when smaller.
#[derive(Debug, Clone, Copy)]
pub struct PushTuning {
    /// Files (or parts of one large file) uploaded at once.
    pub concurrency: usize,
    /// Part size of multipart uploads; larger files use them, and at most concurrency × part
    /// size bytes are held in memory.
    pub part_size: u64,
}

impl Default for PushTuning {
    fn default() -> Self {
        PushTuning {
            concurrency: 8,
            part_size: 8 << 20,
        }
    }
}

/// A worker's storage location. Invariant: `prefix` is `<storage path>/<experiment>/<worker>`.
pub struct Target {
    store: Arc<dyn ObjectStore>,
    /// The same store's multipart interface, so a killed push continues a large file's upload.
    parts: Option<Arc<dyn MultipartStore>>,
    service: Service,
    prefix: Path,
    shown: String,
}

impl Target {
    /// Opens the store of `url` for `identity` (checked before any work is done).
    pub fn open(
        url: &Url,
        identity: &JobIdentity,
        options: &StoreOptions,
    ) -> Result<Target, ArtifactsError> {
        let opened = storage::open_parts(url, options)?;
        Ok(Target {
            store: opened.objects,
            parts: opened.parts,
            service: Service::from_scheme(url.scheme()).unwrap_or(Service::Local),
            prefix: identity.worker_prefix(&opened.path),
            shown: identity.shown_under(url),
        })
    }

    /// The push of `dir` to this target, tuned.
    fn config(&self, state_dir: &FsPath, tuning: PushTuning) -> PushConfig {
        let part = usize::try_from(tuning.part_size.max(MIN_PART_SIZE)).unwrap_or(usize::MAX);
        let mut cfg = PushConfig::new(
            self.store.clone(),
            self.service,
            self.prefix.clone(),
            self.shown.clone(),
            state_dir.to_path_buf(),
        );
        cfg.parts = self.parts.clone();
        cfg.concurrency = tuning.concurrency.max(1);
        cfg.part_size = part;
        // One PUT up to a part's size: in-flight memory stays under concurrency × part size.
        cfg.multipart_above = part as u64;
        cfg
    }

    /// Pushes each folder as the next save, in order; returns each folder with its outcome.
    pub async fn push_all(
        &self,
        dirs: &[PathBuf],
        state_dir: &FsPath,
        tuning: PushTuning,
    ) -> Result<Vec<(PathBuf, PushOutcome)>, ArtifactsError> {
        let cfg = self.config(state_dir, tuning);
        let mut outcomes = Vec::with_capacity(dirs.len());
        for dir in dirs {
            let outcome = push(dir, &cfg).await?;
            outcomes.push((dir.clone(), outcome));
        }
        Ok(outcomes)
    }

    /// The save an interrupted push of `dir` left unfinished, and its files stored so far.
    pub fn unfinished(&self, dir: &FsPath, state_dir: &FsPath) -> Option<(u64, usize)> {
        unfinished(dir, &self.config(state_dir, PushTuning::default()))
    }

    /// Deletes complete saves older than the newest `keep` (see [`super::prune`]).
    pub async fn prune(&self, keep: NonZeroUsize) -> Result<Vec<u64>, ArtifactsError> {
        Ok(super::prune::prune(&self.store, self.service, &self.base(), keep).await?)
    }

    /// Restores the latest complete save into `dir` (see [`super::restore`]).
    pub async fn restore(
        &self,
        dir: &FsPath,
        concurrency: usize,
    ) -> Result<Restored, ArtifactsError> {
        let (base, shown) = (self.base(), self.shown_base());
        let saves = Saves {
            store: &self.store,
            service: self.service,
            base: &base,
            shown: &shown,
            concurrency: concurrency.max(1),
        };
        restore(&saves, dir).await
    }

    /// The worker's `…/artifacts` prefix.
    fn base(&self) -> Path {
        self.prefix.clone().join(ARTIFACTS_DIR)
    }

    /// The redacted URL of [`Target::base`].
    pub fn shown_base(&self) -> String {
        format!("{}/{ARTIFACTS_DIR}", self.shown.trim_end_matches('/'))
    }
}
