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

/// How many listed objects neither the manifest names nor the save itself owns. The manifest and
/// the push's claim object belong to every save; anything else is worth a warning (a file added
/// to the save by hand, say).
fn unnamed(prefix: &Path, wanted: &[Wanted], listed: &[ObjectMeta]) -> usize {
    let own = [
        prefix.clone().join(super::manifest::MANIFEST_FILE),
        prefix.clone().join(super::saves::CLAIM_FILE),
    ];
    let named: std::collections::HashSet<&Path> = wanted.iter().map(|w| &w.meta.location).collect();
    listed
        .iter()
        .filter(|m| !named.contains(&m.location) && !own.contains(&m.location))
        .count()
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
    let extra = unnamed(prefix, &wanted, listed);
    if extra > 0 {
        tracing::warn!(save, extra, "objects not in the manifest are not loaded");
    }
    Ok(wanted)
}

/// Where a manifest entry lands below `stage`.
pub fn stage_path(stage: &FsPath, entry: &FileEntry) -> PathBuf {
    super::upload::local_path(stage, &entry.path)
}

/// Checks each fetched file's size and sha256 (blocking: run off the async threads).
/// `hashed[i]`, when given, is the digest of `wanted[i]` taken as it was downloaded (its size was
/// checked then too); other files are read back and hashed on one thread per core, each taking the
/// next file, so a load of many files is not held to one core's hashing speed. The first mismatch
/// found is reported.
pub fn check(
    save: &str,
    stage: &FsPath,
    wanted: &[Wanted],
    hashed: &[Option<[u8; 32]>],
) -> Result<(), ArtifactsError> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let to_read = (0..wanted.len())
        .filter(|i| hashed.get(*i).copied().flatten().is_none())
        .count();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(to_read.max(1));
    let check_one = |i: usize, w: &Wanted| -> Result<(), ArtifactsError> {
        let (sha, size) = match hashed.get(i).copied().flatten() {
            Some(digest) => (hex::encode(digest), w.meta.size),
            None => {
                let path = stage_path(stage, &w.entry);
                let (sha, stamp) = super::upload::hash_stable(&path, 1)?;
                (sha, stamp.size)
            }
        };
        if size != w.entry.size || sha != w.entry.sha256 {
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
            if let Err(e) = check_one(i, w) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifacts::manifest::{FileEntry, Manifest};

    fn meta(key: &str, size: u64) -> ObjectMeta {
        ObjectMeta {
            location: Path::from(key),
            last_modified: chrono::DateTime::UNIX_EPOCH,
            size,
            e_tag: None,
            version: None,
        }
    }

    #[test]
    fn the_manifest_and_the_claim_are_not_counted_as_unnamed_objects() {
        let prefix = Path::from("jobs/e/w/artifacts/1");
        let manifest = Manifest::new(
            1,
            vec![FileEntry {
                path: "model/w.bin".into(),
                size: 3,
                sha256: "00".into(),
            }],
            vec![],
        );
        let mut listed = vec![
            meta("jobs/e/w/artifacts/1/model/w.bin", 3),
            meta("jobs/e/w/artifacts/1/manifest.json", 100),
            meta("jobs/e/w/artifacts/1/.claim", 32),
        ];
        let wanted = plan("save", &prefix, &manifest, &listed).unwrap();
        assert_eq!(wanted.len(), 1);
        assert_eq!(unnamed(&prefix, &wanted, &listed), 0);
        listed.push(meta("jobs/e/w/artifacts/1/notes.txt", 5));
        assert_eq!(unnamed(&prefix, &wanted, &listed), 1);
    }
}
