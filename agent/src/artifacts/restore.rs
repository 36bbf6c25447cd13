//! Restoring the latest complete save of a worker into a folder before its command starts, so a
//! restarted job resumes from its last checkpoint; and [`load`], the checked download of a save
//! that `localize` uses too.
//!
//! A restore fills an empty (or missing) folder only: a folder that already holds files holds
//! what the job wrote since, which is never older than a save and is kept. The save's files are
//! downloaded into `<folder>/.periscope-restore/<n>/` (the same filesystem), each checked against
//! the manifest (size, sha256, part digests) as `localize` checks a save; then the file `ready`
//! is written there and each top-level entry is renamed into the folder. A restore killed before
//! `ready` leaves a folder a new restore starts again; one killed after it is finished by the next
//! restore. So the folder holds either nothing of the save or all of it, verified, once any
//! restore has returned.
//!
//! While it reads save `n`, a restore holds a lease (`artifacts/.reading/<n>/<token>`) that
//! [`super::prune`] respects. This module never prints.

use std::path::Path as FsPath;
use std::sync::Arc;

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use super::manifest::Manifest;
use super::verify::{self, Wanted};
use super::{saves, ArtifactsError};
use crate::fsutil::write_atomic;
use crate::storage::download::{self, Progress};
use crate::storage::{Service, StorageError};

/// The folder, inside the restored folder, where a restore stages the save.
pub const STAGING_DIR: &str = ".periscope-restore";

/// The file in [`STAGING_DIR`] that says the staged save is complete and verified (it holds the
/// save number): from then on, moving its entries into place finishes the restore.
const READY_FILE: &str = "ready";

/// The folder below a worker's `artifacts/` that holds read leases.
pub const LEASES_DIR: &str = ".reading";

/// How a restore ended. Invariant: `Loaded` and `AlreadyThere` name a complete, verified save.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restored {
    /// The save was brought into the folder, every file checked against its manifest.
    Loaded { save: u64, files: u64, bytes: u64 },
    /// The folder already holds exactly the paths and sizes of the latest save: nothing was done.
    AlreadyThere { save: u64 },
    /// The folder holds other files, kept as they are: what the job wrote since its last save.
    KeptLocal { files: usize, latest: Option<u64> },
    /// No complete save is stored yet: a job's first start.
    NothingYet,
}

/// Where a worker's saves are and how to fetch them. Invariant: `base` is the worker's
/// `…/artifacts` prefix in `store`.
pub struct Saves<'a> {
    pub store: &'a Arc<dyn ObjectStore>,
    pub service: Service,
    pub base: &'a Path,
    /// The redacted URL of `base`, for messages.
    pub shown: &'a str,
    /// Objects (or ranges of a large one) downloaded at once.
    pub concurrency: usize,
}

/// Restores the latest complete save into `dir` as the module docs say.
pub async fn restore(from: &Saves<'_>, dir: &FsPath) -> Result<Restored, ArtifactsError> {
    let io = |path: &FsPath| {
        let path = path.to_path_buf();
        move |error| ArtifactsError::Read { path, error }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let staging = dir.join(STAGING_DIR);
    if let Some(save) = ready_save(&staging) {
        tracing::info!(save, dir = %dir.display(), "finishing a restore that was interrupted after its download");
        let (files, bytes) = move_into_place(&staging, save, dir)?;
        return Ok(Restored::Loaded { save, files, bytes });
    }
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(io(&staging))?;
    }
    let local = local_files(dir)?;
    let stored = saves::list(from.store, from.service, from.base).await?;
    let Some((n, manifest, _)) = stored.latest else {
        return Ok(match local.is_empty() {
            true => Restored::NothingYet,
            false => Restored::KeptLocal {
                files: local.len(),
                latest: None,
            },
        });
    };
    if !local.is_empty() {
        let held: Vec<(String, u64)> = manifest
            .files
            .iter()
            .map(|f| (f.path.clone(), f.size))
            .collect();
        return Ok(match held == local {
            true => Restored::AlreadyThere { save: n },
            false => Restored::KeptLocal {
                files: local.len(),
                latest: Some(n),
            },
        });
    }
    let lease = Lease::take(from, n).await?;
    let loaded = fetch(from, n, &manifest, &staging).await;
    lease.release().await;
    if loaded.is_err() {
        // Nothing of a refused save stays behind (a kill here is cleaned by the next restore).
        let _ = std::fs::remove_dir_all(&staging);
    }
    let bytes = loaded?;
    // Durable before `ready` says so: a restore finished after a crash moves only whole files.
    crate::fsutil::sync_tree(&staging).map_err(io(&staging))?;
    write_atomic(&staging.join(READY_FILE), n.to_string().as_bytes())
        .map_err(io(&staging.join(READY_FILE)))?;
    let (files, _) = move_into_place(&staging, n, dir)?;
    tracing::info!(save = n, files, bytes, dir = %dir.display(), "restored the latest save");
    Ok(Restored::Loaded {
        save: n,
        files,
        bytes,
    })
}

/// Downloads save `n` into `<staging>/<n>/`, checked against `manifest`; returns the bytes.
async fn fetch(
    from: &Saves<'_>,
    n: u64,
    manifest: &Manifest,
    staging: &FsPath,
) -> Result<u64, ArtifactsError> {
    let prefix = from.base.clone().join(n.to_string());
    let listed: Vec<_> = futures::TryStreamExt::try_collect(from.store.list(Some(&prefix)))
        .await
        .map_err(|e| StorageError::request(from.service, prefix.to_string(), &e))?;
    let shown = format!("{}/{n}/", from.shown.trim_end_matches('/'));
    let wanted = verify::plan(&shown, &prefix, manifest, &listed)?;
    let stage = staging.join(n.to_string());
    std::fs::create_dir_all(&stage).map_err(|error| ArtifactsError::Read {
        path: stage.clone(),
        error,
    })?;
    let (store, service, concurrency) = (from.store, from.service, from.concurrency);
    load(store, service, concurrency, &shown, wanted, &stage, &|_| {}).await
}

/// Downloads the `wanted` files of a save into `stage` and checks each against its manifest
/// entry (size, then sha256 or every part's digest, taken as the bytes stream in or read back);
/// any difference is an integrity error. Returns the bytes written.
pub async fn load(
    store: &Arc<dyn ObjectStore>,
    service: Service,
    concurrency: usize,
    save: &str,
    wanted: Vec<Wanted>,
    stage: &FsPath,
    progress: Progress<'_>,
) -> Result<u64, ArtifactsError> {
    let downloads: Vec<download::Download> = wanted
        .iter()
        .map(|w| download::Download {
            meta: w.meta.clone(),
            path: verify::stage_path(stage, &w.entry),
            hashing: match w.entry.parts() {
                Some(parts) => download::Hashing::Parts(parts.size),
                None => download::Hashing::Whole,
            },
        })
        .collect();
    for d in &downloads {
        if let Some(parent) = d.path.parent() {
            std::fs::create_dir_all(parent).map_err(|error| ArtifactsError::Read {
                path: parent.to_path_buf(),
                error,
            })?;
        }
    }
    let done =
        download::download_all(store.clone(), service, &downloads, concurrency, progress).await?;
    let (save, dir, hashed) = (save.to_string(), stage.to_path_buf(), done.digests);
    tokio::task::spawn_blocking(move || verify::check(&save, &dir, &wanted, &hashed))
        .await
        .map_err(|e| ArtifactsError::Task(e.to_string()))??;
    Ok(done.bytes)
}

/// The save a staged restore holds complete and verified, if `ready` says so.
fn ready_save(staging: &FsPath) -> Option<u64> {
    std::fs::read_to_string(staging.join(READY_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Renames each top-level entry of the staged save into `dir` (an entry already moved by an
/// interrupted restore is gone from the stage), then removes the stage. Returns the files and
/// bytes now in `dir`.
fn move_into_place(staging: &FsPath, n: u64, dir: &FsPath) -> Result<(u64, u64), ArtifactsError> {
    let stage = staging.join(n.to_string());
    let io = |path: &FsPath| {
        let path = path.to_path_buf();
        move |error| ArtifactsError::Read { path, error }
    };
    if stage.exists() {
        for entry in std::fs::read_dir(&stage).map_err(io(&stage))? {
            let entry = entry.map_err(io(&stage))?;
            let to = dir.join(entry.file_name());
            std::fs::rename(entry.path(), &to).map_err(io(&to))?;
        }
    }
    crate::fsutil::sync_dir(dir).map_err(io(dir))?;
    std::fs::remove_dir_all(staging).map_err(io(staging))?;
    let files = local_files(dir)?;
    Ok((files.len() as u64, files.iter().map(|(_, s)| s).sum()))
}

/// The regular files under `dir` (its staging folder left out), relative and sorted, with sizes.
fn local_files(dir: &FsPath) -> Result<Vec<(String, u64)>, ArtifactsError> {
    let walked = super::walk::walk(dir)?;
    Ok(walked
        .files
        .into_iter()
        .filter(|f| f.rel.split('/').next() != Some(STAGING_DIR))
        .map(|f| (f.rel, f.stamp.size))
        .collect())
}

/// A read lease on one save: an object whose presence (while it is fresh) keeps
/// [`super::prune`] from deleting the save. Invariant: `key` was written by this process.
struct Lease<'a> {
    from: &'a Saves<'a>,
    key: Path,
}

impl<'a> Lease<'a> {
    async fn take(from: &'a Saves<'a>, n: u64) -> Result<Lease<'a>, ArtifactsError> {
        let token = hex::encode(rand::random::<[u8; 8]>());
        let key = from
            .base
            .clone()
            .join(LEASES_DIR)
            .join(n.to_string())
            .join(token);
        from.store
            .put(&key, PutPayload::from_static(b"reading"))
            .await
            .map_err(|e| StorageError::request(from.service, key.to_string(), &e))?;
        Ok(Lease { from, key })
    }

    /// Removes the lease (best effort: a lease left behind goes stale on its own).
    async fn release(self) {
        if let Err(e) = self.from.store.delete(&self.key).await {
            tracing::debug!(key = %self.key, error = %e, "cannot remove a read lease; it goes stale");
        }
        let leases = self.from.base.clone().join(LEASES_DIR);
        crate::storage::remove_empty_folders(self.from.service, &leases);
    }
}

/// The save numbers under `base` read by someone now: those with a lease younger than `fresh`.
pub async fn leased(
    store: &Arc<dyn ObjectStore>,
    service: Service,
    base: &Path,
    fresh: std::time::Duration,
) -> Result<std::collections::BTreeSet<u64>, StorageError> {
    let prefix = base.clone().join(LEASES_DIR);
    let listed: Vec<_> = futures::TryStreamExt::try_collect(store.list(Some(&prefix)))
        .await
        .map_err(|e| StorageError::request(service, prefix.to_string(), &e))?;
    let now = chrono::Utc::now();
    let fresh = chrono::Duration::from_std(fresh).unwrap_or(chrono::Duration::MAX);
    Ok(listed
        .iter()
        .filter(|m| now - m.last_modified < fresh)
        .filter_map(|m| {
            let rel: Vec<_> = m.location.prefix_match(&prefix)?.collect();
            rel.first()?.as_ref().parse().ok()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifacts::push::{push, PushConfig};
    use object_store::memory::InMemory;

    /// A store holding one save of `files`, and the worker's `artifacts` prefix.
    async fn one_save(files: &[(&str, &[u8])]) -> (Arc<dyn ObjectStore>, Path) {
        let work = tempfile::tempdir().unwrap();
        for (rel, body) in files {
            let path = work.path().join("src").join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, body).unwrap();
        }
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let cfg = PushConfig::for_tests(store.clone(), work.path().join("state"));
        assert_eq!(push(&work.path().join("src"), &cfg).await.unwrap().save, 1);
        (store, Path::from("jobs/e/w/artifacts"))
    }

    #[tokio::test]
    async fn an_interrupted_restore_is_started_again_or_finished_never_left_half_done() {
        let (store, base) = one_save(&[("a.bin", b"aaa"), ("sub/b.bin", b"bb")]).await;
        let from = Saves {
            store: &store,
            service: Service::Local,
            base: &base,
            shown: "mem://jobs/e/w/artifacts",
            concurrency: 2,
        };
        let dir = tempfile::tempdir().unwrap();
        let read = |rel: &str| std::fs::read(dir.path().join(rel)).unwrap();

        // Killed while downloading: a stage without `ready` is thrown away and fetched again.
        let staging = dir.path().join(STAGING_DIR);
        std::fs::create_dir_all(staging.join("1/sub")).unwrap();
        std::fs::write(staging.join("1/sub/b.bin"), b"b").unwrap();
        let restored = restore(&from, dir.path()).await.unwrap();
        assert!(
            matches!(
                restored,
                Restored::Loaded {
                    save: 1,
                    files: 2,
                    bytes: 5
                }
            ),
            "{restored:?}"
        );
        assert_eq!(
            (read("a.bin"), read("sub/b.bin")),
            (b"aaa".to_vec(), b"bb".to_vec())
        );
        assert!(!staging.exists());

        // Killed while moving into place: the verified stage is finished, not fetched again.
        let dir2 = tempfile::tempdir().unwrap();
        let staging2 = dir2.path().join(STAGING_DIR);
        std::fs::create_dir_all(staging2.join("1/sub")).unwrap();
        std::fs::write(staging2.join("1/sub/b.bin"), b"bb").unwrap();
        std::fs::write(dir2.path().join("a.bin"), b"aaa").unwrap();
        std::fs::write(staging2.join(READY_FILE), b"1").unwrap();
        let restored = restore(&from, dir2.path()).await.unwrap();
        assert_eq!(
            restored,
            Restored::Loaded {
                save: 1,
                files: 2,
                bytes: 5
            }
        );
        assert_eq!(std::fs::read(dir2.path().join("sub/b.bin")).unwrap(), b"bb");
        assert!(!staging2.exists());

        // A tampered object refuses the restore and leaves the folder without the save.
        store
            .put(
                &Path::from("jobs/e/w/artifacts/1/a.bin"),
                PutPayload::from_static(b"xxx"),
            )
            .await
            .unwrap();
        let dir3 = tempfile::tempdir().unwrap();
        let err = restore(&from, dir3.path()).await.unwrap_err();
        assert!(matches!(err, ArtifactsError::Integrity { .. }), "{err}");
        assert!(!dir3.path().join("a.bin").exists());
        assert!(!dir3.path().join(STAGING_DIR).exists());
        // No read lease outlives a restore.
        assert!(leased(
            &store,
            Service::Local,
            &base,
            std::time::Duration::from_secs(60)
        )
        .await
        .unwrap()
        .is_empty());
    }
}
