//! Loading a save back: which stored objects to fetch for a manifest, and checking what was
//! fetched against it. A missing object, a size or sha256 that differs, or a path in the manifest
//! that is not a safe relative path is an integrity failure; objects the manifest does not name
//! are not fetched. This module never writes (the localize stage is written by its caller).

use std::collections::HashMap;
use std::path::{Path as FsPath, PathBuf};

use object_store::path::Path;
use object_store::ObjectMeta;

use super::manifest::{FileEntry, Manifest};
use super::ArtifactsError;

/// One object to fetch and where it lands. Invariant: `rel` is a safe relative path.
#[derive(Debug, Clone)]
pub struct Wanted {
    pub entry: FileEntry,
    pub meta: ObjectMeta,
}

fn refuse(save: &str, reason: String) -> ArtifactsError {
    ArtifactsError::Integrity {
        save: save.to_string(),
        reason,
    }
}

/// Matches the manifest of the save at `prefix` with the listed objects.
pub fn plan(
    save: &str,
    prefix: &Path,
    manifest: &Manifest,
    listed: &[ObjectMeta],
) -> Result<Vec<Wanted>, ArtifactsError> {
    let by_key: HashMap<&Path, &ObjectMeta> = listed.iter().map(|m| (&m.location, m)).collect();
    let mut wanted = Vec::with_capacity(manifest.files.len());
    for entry in &manifest.files {
        let parts: Vec<&str> = entry.path.split('/').collect();
        if parts
            .iter()
            .any(|p| p.is_empty() || *p == "." || *p == ".." || p.contains('\0'))
        {
            return Err(refuse(
                save,
                format!(
                    "the manifest names `{}`, which is not a safe relative path",
                    entry.path
                ),
            ));
        }
        let key = parts.iter().fold(prefix.clone(), |p, part| p.join(*part));
        let Some(meta) = by_key.get(&key) else {
            return Err(refuse(save, format!("`{}` is missing", entry.path)));
        };
        if meta.size != entry.size {
            return Err(refuse(
                save,
                format!(
                    "`{}` is {} bytes, the manifest says {}",
                    entry.path, meta.size, entry.size
                ),
            ));
        }
        wanted.push(Wanted {
            entry: entry.clone(),
            meta: (*meta).clone(),
        });
    }
    let extra = listed.len().saturating_sub(wanted.len() + 1);
    if extra > 0 {
        tracing::warn!(save, extra, "objects not in the manifest are not loaded");
    }
    Ok(wanted)
}

/// Where a manifest entry lands below `stage`.
pub fn stage_path(stage: &FsPath, entry: &FileEntry) -> PathBuf {
    super::upload::local_path(stage, &entry.path)
}

/// Checks each fetched file's size and sha256 (blocking: run off the async threads). Files are
/// hashed on one thread per core, each taking the next file, so a load of many files is not held
/// to one core's hashing speed; the first mismatch found is reported.
pub fn check(save: &str, stage: &FsPath, wanted: &[Wanted]) -> Result<(), ArtifactsError> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(wanted.len().max(1));
    let check_one = |w: &Wanted| -> Result<(), ArtifactsError> {
        let path = stage_path(stage, &w.entry);
        let (sha, stamp) = super::upload::hash_stable(&path, 1)?;
        if stamp.size != w.entry.size || sha != w.entry.sha256 {
            return Err(refuse(
                save,
                format!(
                    "`{}` has sha256 {sha}, the manifest says {}",
                    w.entry.path, w.entry.sha256
                ),
            ));
        }
        Ok(())
    };
    let worker = || -> Result<(), ArtifactsError> {
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(w) = wanted.get(i) else {
                return Ok(());
            };
            if let Err(e) = check_one(w) {
                // Stop the other threads early: the load fails whatever they find.
                next.store(wanted.len(), std::sync::atomic::Ordering::Relaxed);
                return Err(e);
            }
        }
    };
    std::thread::scope(|scope| {
        let handles: Vec<_> = (1..threads).map(|_| scope.spawn(worker)).collect();
        let mut result = worker();
        for h in handles {
            // A hashing thread only panics on a bug; pass the panic on rather than hide it.
            let r = h.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
            result = result.and(r);
        }
        result
    })
}
