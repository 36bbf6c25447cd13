//! Where a worker's saves go, and pushing several folders there one after the other: what
//! `artifacts push`, `exec --artifacts` and a sidecar's `--artifacts` share.

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use object_store::multipart::MultipartStore;
use object_store::path::Path;
use object_store::ObjectStore;
use url::Url;

use super::push::{push, PushConfig, PushOutcome};
use super::ArtifactsError;
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

    /// Pushes each folder as the next save, in order; returns each folder with its outcome.
    pub async fn push_all(
        &self,
        dirs: &[PathBuf],
        state_dir: &FsPath,
        tuning: PushTuning,
    ) -> Result<Vec<(PathBuf, PushOutcome)>, ArtifactsError> {
        let part = usize::try_from(tuning.part_size.max(MIN_PART_SIZE)).unwrap_or(usize::MAX);
        let mut outcomes = Vec::with_capacity(dirs.len());
        for dir in dirs {
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
            let outcome = push(dir, &cfg).await?;
            outcomes.push((dir.clone(), outcome));
        }
        Ok(outcomes)
    }
}
