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
use crate::storage::download::Digests;

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
        prefix.clone().join(super::manifest::CLAIM_FILE),
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
    let unsafe_path = |path: &str| {
        path.split('/')
            .any(|p| p.is_empty() || p == "." || p == ".." || p.contains('\0'))
    };
    for entry in &manifest.files {
        for named in [&entry.path, entry.object()] {
            if unsafe_path(named) {
                return Err(refuse(
                    save,
                    format!("the manifest names `{named}`, which is not a safe relative path"),
                ));
            }
        }
        let key = super::push::under(prefix, entry.object());
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

fn mismatch(save: &str, w: &Wanted, sha: &str) -> ArtifactsError {
    refuse(
        save,
        format!(
            "`{}` has sha256 {sha}, the manifest says {}",
            w.entry.path, w.entry.sha256
        ),
    )
}

/// Where a manifest entry lands below `stage`.
pub fn stage_path(stage: &FsPath, entry: &FileEntry) -> PathBuf {
    super::upload::local_path(stage, &entry.path)
}

/// Checks a file against the digests taken as it downloaded: `Ok(true)` when they settle it,
/// `Ok(false)` when they do not (none were taken, or not of every part the manifest lists), and
/// the file must be read back.
fn settled_by_stream(save: &str, w: &Wanted, taken: &Digests) -> Result<bool, ArtifactsError> {
    match taken {
        Digests::Whole(digest) => {
            let sha = hex::encode(digest);
            if sha != w.entry.sha256 {
                return Err(mismatch(save, w, &sha));
            }
            Ok(true)
        }
        Digests::Parts(taken) => {
            let Some(parts) = w.entry.parts() else {
                return Ok(false);
            };
            if taken.len() != parts.sha256.len() || taken.iter().any(Option::is_none) {
                return Ok(false);
            }
            for (i, (got, want)) in taken.iter().flatten().zip(&parts.sha256).enumerate() {
                let got = hex::encode(got);
                if &got != want {
                    let start = i as u64 * parts.size;
                    let end = (start + parts.size).min(w.entry.size);
                    return Err(refuse(
                        save,
                        format!(
                            "`{}` bytes {start}..{end} (part {}) have sha256 {got}, the manifest says {want}",
                            w.entry.path,
                            i + 1
                        ),
                    ));
                }
            }
            Ok(true)
        }
        Digests::None => Ok(false),
    }
}

/// Checks each fetched file's size and sha256 (blocking: run off the async threads).
/// `taken[i]` holds the digests of `wanted[i]` taken as it was downloaded (its size was checked
/// then too): the whole file's, or every part's that the manifest lists. Other files are read
/// back and hashed on one thread per core, each taking the next file, so a load of many files is
/// not held to one core's hashing speed. The first mismatch found is reported.
pub fn check(
    save: &str,
    stage: &FsPath,
    wanted: &[Wanted],
    taken: &[Digests],
) -> Result<(), ArtifactsError> {
    let mut to_read = Vec::new();
    for (i, w) in wanted.iter().enumerate() {
        if !settled_by_stream(save, w, taken.get(i).unwrap_or(&Digests::None))? {
            to_read.push(w);
        }
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    crate::parallel::try_for_each(&to_read, cores, |w| {
        let path = stage_path(stage, &w.entry);
        let (sha, stamp) = super::upload::hash_stable(&path, 1)?;
        if stamp.size != w.entry.size || sha != w.entry.sha256 {
            return Err(mismatch(save, w, &sha));
        }
        Ok(())
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
    fn part_digests_taken_while_downloading_decide_without_reading_back() {
        use crate::artifacts::manifest::Parts;
        use sha2::{Digest, Sha256};
        let stage = tempfile::tempdir().unwrap();
        let part = 1usize << 20;
        let body: Vec<u8> = (0..3 * part + 5).map(|i| (i % 249) as u8).collect();
        let digests: Vec<[u8; 32]> = body
            .chunks(part)
            .map(|c| Sha256::digest(c).into())
            .collect();
        let entry = FileEntry::new(
            "model/w.bin".into(),
            body.len() as u64,
            hex::encode(Sha256::digest(&body)),
            Some(Parts {
                size: part as u64,
                sha256: digests.iter().map(hex::encode).collect(),
            }),
        );
        let wanted = vec![Wanted {
            meta: meta("s/model/w.bin", entry.size),
            entry,
        }];
        let all: Vec<Option<[u8; 32]>> = digests.iter().copied().map(Some).collect();

        // Every part's digest was taken: nothing is read back (the file is not even there).
        check(
            "save",
            stage.path(),
            &wanted,
            &[Digests::Parts(all.clone())],
        )
        .unwrap();

        // A part that differs is named with its byte range.
        let mut bad = all.clone();
        bad[1] = Some([0u8; 32]);
        let err = check("save", stage.path(), &wanted, &[Digests::Parts(bad)]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("bytes 1048576..2097152 (part 2)"), "{text}");

        // A part nobody could hash is settled by reading the file back: good, then tampered.
        let mut unknown = all;
        unknown[3] = None;
        let path = stage.path().join("model/w.bin");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &body).unwrap();
        check(
            "save",
            stage.path(),
            &wanted,
            &[Digests::Parts(unknown.clone())],
        )
        .unwrap();
        let mut tampered = body.clone();
        tampered[3 * part + 1] ^= 1;
        std::fs::write(&path, &tampered).unwrap();
        let err = check("save", stage.path(), &wanted, &[Digests::Parts(unknown)]).unwrap_err();
        assert!(err.to_string().contains("has sha256"), "{err}");
    }

    #[test]
    fn the_manifest_and_the_claim_are_not_counted_as_unnamed_objects() {
        let prefix = Path::from("jobs/e/w/artifacts/1");
        let manifest = Manifest::new(
            1,
            vec![FileEntry::new("model/w.bin".into(), 3, "00".into(), None)],
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
