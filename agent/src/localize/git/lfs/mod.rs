//! Git LFS: after a checkout, the files git-lfs would smudge (their `filter` attribute is `lfs`
//! and their blob is an LFS [`pointer`]) are replaced by the objects they name, as `git lfs
//! clone` leaves them, instead of being published as pointer files.
//!
//! * [`pointer`] reads pointer files; [`endpoint`] finds where objects come from (`.lfsconfig`,
//!   or the repository URL as git-lfs derives it); [`transfer`] fetches them, verified.
//!
//! Objects come over HTTP(S) through the batch API, with the source's credentials on the source's
//! own server only, or from a local repository's `lfs/objects/`. Over ssh and git://, where
//! git-lfs would ask the server through `git-lfs-authenticate`, the source is refused rather than
//! published with pointer files; `GIT_LFS_SKIP_SMUDGE=1` (git-lfs's own switch) keeps the
//! pointers. Objects are not kept under `.git/lfs/`: the checkout holds each one once.

mod endpoint;
mod pointer;
mod transfer;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use git2::{AttrCheckFlags, FileMode, ObjectType, Repository};

use super::checkout::restat;
use super::error::GitError;
use super::session::Session;
use crate::localize::SourceProgress;
use pointer::{Parsed, Pointer, MAX_POINTER_SIZE};
use transfer::Wanted;

/// Replaces the LFS pointer files of `repo`'s checkout (fetched from `url`, without credentials)
/// with their objects. `max_bytes` bounds what the objects may add up to.
pub fn smudge(
    repo: &Repository,
    url: &str,
    session: &Session,
    progress: &SourceProgress,
    max_bytes: u64,
) -> Result<(), GitError> {
    let found = pointer_files(repo)?;
    if found.is_empty() {
        return Ok(());
    }
    if std::env::var("GIT_LFS_SKIP_SMUDGE").is_ok_and(|v| v == "1" || v == "true") {
        tracing::warn!(
            files = found.len(),
            "GIT_LFS_SKIP_SMUDGE is set: Git LFS files are left as pointer files"
        );
        return Ok(());
    }
    let mut wanted: Vec<Wanted> = Vec::new();
    let mut seen = HashMap::new();
    for (path, pointer) in &found {
        if seen.insert(pointer.oid.clone(), ()).is_none() {
            wanted.push(Wanted {
                pointer: pointer.clone(),
                path: String::from_utf8_lossy(path).into_owned(),
            });
        }
    }
    let bytes: u64 = wanted.iter().map(|w| w.pointer.size).sum();
    if bytes > max_bytes {
        return Err(GitError::TooLarge {
            what: format!("Git LFS objects of {bytes} bytes"),
            limit: format!("{max_bytes} bytes (--max-bytes)"),
        });
    }
    let endpoint = endpoint::find(repo, url)?;
    tracing::info!(
        files = found.len(),
        objects = wanted.len(),
        bytes,
        "fetching Git LFS objects"
    );
    let tmp = repo.path().join("lfs/tmp");
    let io = |what: &str, path: &Path, e: std::io::Error| GitError::Local {
        detail: format!("cannot {what} `{}`: {e}", path.display()),
    };
    std::fs::create_dir_all(&tmp).map_err(|e| io("create", &tmp, e))?;
    let fetched = transfer::fetch_all(&endpoint, &wanted, &tmp, session, progress);
    let placed = fetched.and_then(|()| place(repo, &found, &tmp));
    let _ = std::fs::remove_dir_all(repo.path().join("lfs"));
    placed
}

/// The checkout's files whose blob is an LFS pointer and whose `filter` attribute is `lfs`.
fn pointer_files(repo: &Repository) -> Result<Vec<(Vec<u8>, Pointer)>, GitError> {
    let local = GitError::local;
    let index = repo.index().map_err(local)?;
    let odb = repo.odb().map_err(local)?;
    let mut found = Vec::new();
    for entry in index.iter() {
        let mode = entry.mode;
        if mode != u32::from(FileMode::Blob) && mode != u32::from(FileMode::BlobExecutable) {
            continue;
        }
        match odb.read_header(entry.id) {
            Ok((size, ObjectType::Blob)) if size < MAX_POINTER_SIZE => {}
            _ => continue,
        }
        let blob = repo.find_blob(entry.id).map_err(local)?;
        let parsed = pointer::parse(blob.content());
        if parsed == Parsed::NotPointer {
            continue;
        }
        let path = Path::new(OsStr::from_bytes(&entry.path));
        let filter = repo
            .get_attr(
                path,
                "filter",
                AttrCheckFlags::INDEX_THEN_FILE | AttrCheckFlags::NO_SYSTEM,
            )
            .map_err(local)?;
        if filter != Some("lfs") {
            continue;
        }
        match parsed {
            Parsed::Pointer(p) => found.push((entry.path.clone(), p)),
            _ => {
                return Err(GitError::LfsUnsupported {
                    reason: format!(
                        "`{}` is an LFS pointer that needs an LFS extension",
                        path.display()
                    ),
                })
            }
        }
    }
    Ok(found)
}

/// Puts each fetched object in place of its pointer files (keeping each file's mode), and records
/// the new files' stat data in the index so `git status` sees them as checked out.
fn place(repo: &Repository, found: &[(Vec<u8>, Pointer)], tmp: &Path) -> Result<(), GitError> {
    let workdir = repo
        .workdir()
        .ok_or_else(|| GitError::Internal("an LFS checkout without a working folder".into()))?;
    let io = |path: &Path, e: std::io::Error| GitError::Local {
        detail: format!("cannot write `{}`: {e}", path.display()),
    };
    let mut index = repo.index().map_err(GitError::local)?;
    // The last file naming an object takes the fetched file; the others get copies.
    let mut remaining: HashMap<&str, usize> = HashMap::new();
    for (_, p) in found {
        *remaining.entry(p.oid.as_str()).or_default() += 1;
    }
    for (path, pointer) in found {
        let target = workdir.join(OsStr::from_bytes(path));
        let source = transfer::temp_path(tmp, &pointer.oid);
        let mode = std::fs::symlink_metadata(&target)
            .map_err(|e| io(&target, e))?
            .permissions();
        let left = remaining.get_mut(pointer.oid.as_str()).map_or(0, |n| {
            *n -= 1;
            *n
        });
        if left == 0 {
            std::fs::set_permissions(&source, mode).map_err(|e| io(&target, e))?;
            std::fs::rename(&source, &target).map_err(|e| io(&target, e))?;
        } else {
            // `copy` writes through the existing pointer file, a regular file just checked out.
            std::fs::remove_file(&target).map_err(|e| io(&target, e))?;
            std::fs::copy(&source, &target).map_err(|e| io(&target, e))?;
            std::fs::set_permissions(&target, mode).map_err(|e| io(&target, e))?;
        }
        let meta = std::fs::symlink_metadata(&target).map_err(|e| io(&target, e))?;
        let path_str = Path::new(OsStr::from_bytes(path));
        if let Some(mut entry) = index.get_path(path_str, 0) {
            restat(&mut entry, &meta);
            index.add(&entry).map_err(GitError::local)?;
        }
    }
    index.write().map_err(GitError::local)
}
