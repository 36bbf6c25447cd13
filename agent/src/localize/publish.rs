//! Staging and atomic publish.
//!
//! Fetchers write only into a staging folder under `DEST/.periscope/staging/`, on the same
//! filesystem as `DEST` (which is often an emptyDir mount point, so a sibling of DEST would not
//! be). Publishing is one rename: `DEST/<into>` either does not exist yet, or is swapped with the
//! staged tree in a single `renameat2(RENAME_EXCHANGE)`, so a reader never sees a half-made tree.
//! This module must never write into `DEST/<into>` directly.

use std::ffi::CString;
use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::{Classify, ErrorClass};
use crate::fsutil::{parent_dir, sync_dir, sync_tree};

/// A local filesystem failure while preparing or publishing.
#[derive(Debug, thiserror::Error)]
#[error("{action} `{}`: {error}", path.display())]
pub struct PublishError {
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub error: io::Error,
}

impl Classify for PublishError {
    fn class(&self) -> ErrorClass {
        ErrorClass::Io
    }

    fn hint(&self) -> Option<String> {
        Some("check that the destination is writable by this user and has free space".into())
    }
}

fn ctx<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> PublishError + 'a {
    move |error| PublishError {
        action,
        path: path.to_path_buf(),
        error,
    }
}

/// An exclusive lock on a destination, held while localizing into it, so two processes that share
/// a volume never publish over each other. Released when dropped.
pub struct DestLock {
    _file: File,
}

impl DestLock {
    /// Blocks until the lock on `meta_dir/lock` is held.
    pub fn acquire(meta_dir: &Path) -> Result<DestLock, PublishError> {
        let path = meta_dir.join("lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(ctx("cannot open lock file", &path))?;
        // SAFETY: flock on a file descriptor we own; no memory is shared with the kernel.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc != 0 {
            return Err(ctx("cannot lock", &path)(io::Error::last_os_error()));
        }
        Ok(DestLock { _file: file })
    }
}

/// Removes staging folders left by a run that crashed.
pub fn clean_stale_staging(staging_root: &Path) -> Result<(), PublishError> {
    match fs::read_dir(staging_root) {
        Ok(entries) => {
            for entry in entries.flatten() {
                let path = entry.path();
                tracing::info!(path = %path.display(), "removing staging left by an earlier run");
                remove_tree(&path)?;
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ctx("cannot read staging folder", staging_root)(e)),
    }
}

/// Creates a fresh, empty staging folder for one source.
pub fn new_stage(staging_root: &Path, into: &str) -> Result<PathBuf, PublishError> {
    fs::create_dir_all(staging_root).map_err(ctx("cannot create staging folder", staging_root))?;
    let safe: String = into
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let stage = staging_root.join(format!(
        "{safe}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    fs::create_dir(&stage).map_err(ctx("cannot create staging folder", &stage))?;
    Ok(stage)
}

/// Removes a folder tree; a missing folder is fine.
pub fn remove_tree(path: &Path) -> Result<(), PublishError> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ctx("cannot remove", path)(e)),
    }
}

/// Moves the staged tree to `target` in one step, replacing whatever was there.
pub fn publish(stage: &Path, target: &Path) -> Result<(), PublishError> {
    // Make the staged files durable before the rename makes them visible: after a power cut, a
    // published tree must never hold empty files that the record calls done. This covers every
    // file a fetcher wrote, whichever fetcher it was.
    sync_tree(stage).map_err(ctx("cannot sync", stage))?;
    let parent = parent_dir(target);
    fs::create_dir_all(parent).map_err(ctx("cannot create", parent))?;
    match fs::symlink_metadata(target) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::rename(stage, target).map_err(ctx("cannot publish to", target))?;
        }
        Err(e) => return Err(ctx("cannot inspect", target)(e)),
        Ok(meta) if !meta.is_dir() => {
            // A file or symlink where the tree belongs: replacing it is one rename too.
            fs::rename(stage, target).map_err(ctx("cannot publish to", target))?;
        }
        Ok(_) => match exchange(stage, target) {
            // After the exchange, `stage` holds the old tree.
            Ok(()) => remove_tree(stage)?,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS)) => {
                // The filesystem cannot exchange; fall back to two renames (a short gap, no mix).
                let old = stage.with_extension("old");
                fs::rename(target, &old).map_err(ctx("cannot move aside", target))?;
                fs::rename(stage, target).map_err(ctx("cannot publish to", target))?;
                remove_tree(&old)?;
            }
            Err(e) => return Err(ctx("cannot publish to", target)(e)),
        },
    }
    sync_dir(parent).map_err(ctx("cannot sync", parent))
}

fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    let ca = CString::new(a.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let cb = CString::new(b.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: both pointers are valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publishes_then_replaces_in_one_step() {
        let root = tempfile::tempdir().unwrap();
        let staging = root.path().join(".periscope/staging");
        let target = root.path().join("job");
        let s1 = new_stage(&staging, "job").unwrap();
        fs::write(s1.join("a.txt"), "one").unwrap();
        publish(&s1, &target).unwrap();
        assert_eq!(fs::read_to_string(target.join("a.txt")).unwrap(), "one");
        let s2 = new_stage(&staging, "job").unwrap();
        fs::write(s2.join("b.txt"), "two").unwrap();
        publish(&s2, &target).unwrap();
        assert!(!target.join("a.txt").exists());
        assert_eq!(fs::read_to_string(target.join("b.txt")).unwrap(), "two");
        assert_eq!(
            fs::read_dir(&staging).unwrap().count(),
            0,
            "old tree left behind"
        );
    }
}
