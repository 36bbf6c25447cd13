//! The push state file: which save an unfinished push writes, which files of it are stored whole,
//! and the sha256 of each file as last read (a cache keyed by size, mtime and inode).
//!
//! It is what lets a push killed with SIGKILL continue the same save `n` without sending again
//! the files it had finished, nor the parts of a large file's multipart upload that the store
//! already holds ([`Unfinished`]). It is written with [`write_atomic`] (never half-written) after a
//! batch of files is stored, so at worst the last batch is sent again, which is harmless: keys
//! are fixed by the save number and relative path, and a second upload overwrites the first.
//! This module owns the file's format and location; it never talks to storage.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::walk::Stamp;
use crate::fsutil::write_atomic;

/// What is known about one file. Invariant: `sha256` is the digest of the file's content when it
/// had `stamp`; `stored` means the object of the current save holds exactly that content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Known {
    pub stamp: Stamp,
    pub sha256: String,
    #[serde(default)]
    pub stored: bool,
}

/// A multipart upload that a push started and has not completed. Invariant: each entry of `parts`
/// is the id the store returned for part `i` of upload `upload_id` to `key`, and that part held
/// bytes `i × part_size ..` of the file's content when the file had `stamp`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unfinished {
    /// The object key the upload completes into.
    pub key: String,
    pub upload_id: String,
    pub stamp: Stamp,
    pub part_size: u64,
    /// Part index to the store's id for it.
    pub parts: BTreeMap<usize, String>,
}

/// The whole state of one (folder, destination) pair. Invariant: `save` is `Some(n)` only while a
/// push of save `n` is unfinished (its manifest not yet written).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushState {
    pub version: u32,
    /// The storage location of the saves (`…/<experiment>/<worker>/artifacts`), redacted.
    pub target: String,
    pub save: Option<u64>,
    /// The token this push wrote into save `save`'s claim object (see [`super::saves::claim`]).
    #[serde(default)]
    pub claim: Option<String>,
    pub files: BTreeMap<String, Known>,
    /// Unfinished multipart uploads of the current save, by relative path.
    #[serde(default)]
    pub uploads: BTreeMap<String, Unfinished>,
}

impl PushState {
    /// The state file for pushing `dir` to `target`, inside `state_dir`.
    pub fn path(state_dir: &Path, dir: &Path, target: &str) -> PathBuf {
        let mut h = Sha256::new();
        h.update(target.as_bytes());
        h.update([0]);
        h.update(dir.as_os_str().as_encoded_bytes());
        let id = hex::encode(h.finalize());
        state_dir.join(format!("artifacts-{}.json", &id[..16]))
    }

    /// Reads the state; a missing or unreadable file, or one for another target, is a fresh
    /// state (everything is hashed and sent again, which is always safe).
    pub fn load(path: &Path, target: &str) -> PushState {
        let fresh = PushState {
            version: 1,
            target: target.to_string(),
            ..PushState::default()
        };
        let Ok(bytes) = std::fs::read(path) else {
            return fresh;
        };
        match serde_json::from_slice::<PushState>(&bytes) {
            Ok(s) if s.target == target => s,
            Ok(_) => fresh,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable push state");
                fresh
            }
        }
    }

    /// Writes the state atomically and durably.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let json = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        write_atomic(path, &json)
    }

    /// The cached digest of a file, when its stamp is unchanged.
    pub fn cached_sha(&self, rel: &str, stamp: &Stamp) -> Option<&str> {
        self.files
            .get(rel)
            .filter(|k| &k.stamp == stamp)
            .map(|k| k.sha256.as_str())
    }

    /// Whether `rel` is stored whole in the current save with this stamp and digest.
    pub fn is_stored(&self, rel: &str, stamp: &Stamp, sha256: &str) -> bool {
        self.files
            .get(rel)
            .is_some_and(|k| k.stored && &k.stamp == stamp && k.sha256 == sha256)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_ignores_other_targets() {
        let dir = tempfile::tempdir().unwrap();
        let path = PushState::path(dir.path(), Path::new("/models"), "s3://b/e/w/artifacts");
        let stamp = Stamp {
            size: 3,
            mtime_ns: 7,
            ino: 9,
        };
        let mut s = PushState::load(&path, "s3://b/e/w/artifacts");
        s.save = Some(2);
        s.files.insert(
            "a".into(),
            Known {
                stamp,
                sha256: "ab".into(),
                stored: true,
            },
        );
        s.save(&path).unwrap();
        let back = PushState::load(&path, "s3://b/e/w/artifacts");
        assert_eq!(back, s);
        assert!(back.is_stored("a", &stamp, "ab"));
        assert!(!back.is_stored("a", &stamp, "cd"));
        assert_eq!(PushState::load(&path, "s3://other").save, None);
    }
}
