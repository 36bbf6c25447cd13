//! Copying the running `periscope` binary into a folder, so that any image in the pod can use it.
//!
//! In a pod, the Periscope image holds nothing but the static binary; the training image is the
//! user's. An initContainer runs `periscope install /periscope/bin` to put the binary on a shared
//! emptyDir, and the main container then runs `/periscope/bin/periscope exec -- CMD`. This module
//! owns only that copy; it must never modify the source binary or write outside the given folder.

use std::fs::{self, Permissions};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::error::{Classify, ErrorClass};
use crate::fsutil::write_atomic;

/// Why the binary could not be installed. Every variant names the path it failed on.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The running executable could not be found or read (e.g. no `/proc` in a chroot).
    #[error("cannot read the running periscope binary {path}: {source}")]
    ReadSelf { path: PathBuf, source: io::Error },
    /// The destination folder could not be created or written.
    #[error("cannot install periscope into {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

impl Classify for InstallError {
    fn class(&self) -> ErrorClass {
        ErrorClass::Io
    }

    fn hint(&self) -> Option<String> {
        match self {
            InstallError::ReadSelf { .. } => Some(
                "run periscope from a path it can read itself at (/proc must be mounted)".into(),
            ),
            InstallError::Write { .. } => {
                Some("mount a writable volume (e.g. an emptyDir) at the destination folder".into())
            }
        }
    }
}

/// Copies the running executable to `dir/periscope` (mode 0755), atomically, and returns the new
/// path. Installing over an existing copy (a restarted initContainer) replaces it in one rename.
pub fn install_self(dir: &Path) -> Result<PathBuf, InstallError> {
    let source = std::env::current_exe().map_err(|source| InstallError::ReadSelf {
        path: PathBuf::from("/proc/self/exe"),
        source,
    })?;
    install_file(&source, dir)
}

/// Copies `source` to `dir/periscope` (mode 0755) atomically; see [`install_self`].
pub fn install_file(source: &Path, dir: &Path) -> Result<PathBuf, InstallError> {
    // The binary is ~12 MB: reading it whole keeps the one atomic-write path for every file we write.
    let bytes = fs::read(source).map_err(|e| InstallError::ReadSelf {
        path: source.to_path_buf(),
        source: e,
    })?;
    let target = dir.join("periscope");
    let write = |e| InstallError::Write {
        path: target.clone(),
        source: e,
    };
    fs::create_dir_all(dir).map_err(write)?;
    write_atomic(&target, &bytes).map_err(write)?;
    // Nothing runs the copy before this initContainer has exited, so setting the mode after the
    // rename cannot race with a reader.
    fs::set_permissions(&target, Permissions::from_mode(0o755)).map_err(write)?;
    tracing::debug!(path = %target.display(), bytes = bytes.len(), "installed periscope");
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_an_executable_and_replaces_an_old_copy() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src-bin");
        fs::write(&src, b"#!/bin/sh\necho new\n").unwrap();
        let bin = dir.path().join("bin");
        fs::create_dir(&bin).unwrap();
        fs::write(bin.join("periscope"), b"old").unwrap();
        let target = install_file(&src, &bin).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"#!/bin/sh\necho new\n");
        let mode = fs::metadata(&target).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
    }

    #[test]
    fn a_missing_source_is_an_io_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let err = install_file(&dir.path().join("nope"), dir.path()).unwrap_err();
        assert_eq!(err.class(), ErrorClass::Io);
        assert!(err.to_string().contains("nope"), "{err}");
    }
}
