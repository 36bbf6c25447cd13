//! `manifest.json`: what one save holds, written last so that its presence means "complete".
//!
//! The manifest lists every stored file (relative path, size, sha256) and every entry of the
//! folder that was deliberately not stored, with the reason. Its [`Manifest::content_digest`]
//! covers only the content (files and skips, in path order), not the save number or time, so two
//! pushes of the same folder compare equal. This module does no I/O.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The manifest's object name inside a save folder.
pub const MANIFEST_FILE: &str = "manifest.json";

/// The value of [`Manifest::format`]; a reader refuses anything else.
pub const FORMAT: &str = "periscope-artifacts/1";

/// One stored file. Invariant: `path` is relative, `/`-separated, made of normal components only,
/// and `sha256` is 64 lowercase hex digits of exactly `size` bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

/// An entry of the folder that was not stored. Invariant: `path` is relative like a file's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    pub path: String,
    pub reason: String,
}

/// One complete save. Invariant: `files` and `skipped` are sorted by path with no duplicates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    /// The save number `n` of `…/artifacts/<n>/`.
    pub save: u64,
    /// RFC 3339, UTC: when the manifest was written.
    pub created_at: String,
    pub files: Vec<FileEntry>,
    #[serde(default)]
    pub skipped: Vec<Skipped>,
}

impl Manifest {
    /// A manifest for `save`, with the entries sorted.
    pub fn new(save: u64, mut files: Vec<FileEntry>, mut skipped: Vec<Skipped>) -> Manifest {
        files.sort_by(|a, b| a.path.cmp(&b.path));
        skipped.sort_by(|a, b| a.path.cmp(&b.path));
        Manifest {
            format: FORMAT.to_string(),
            save,
            created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            files,
            skipped,
        }
    }

    /// Parses a stored manifest; `None` when the bytes are not a manifest of this format.
    pub fn parse(bytes: &[u8]) -> Option<Manifest> {
        let m: Manifest = serde_json::from_slice(bytes).ok()?;
        (m.format == FORMAT).then_some(m)
    }

    /// The bytes that are stored (pretty JSON, for people who open it).
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising plain strings and integers cannot fail.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// Total bytes of the files.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// Hex sha256 over what the save holds (files and skips), independent of number and time.
    pub fn content_digest(&self) -> String {
        let mut h = Sha256::new();
        for f in &self.files {
            h.update(format!("f\0{}\0{}\0{}\n", f.path, f.size, f.sha256));
        }
        for s in &self.skipped {
            h.update(format!("s\0{}\0{}\n", s.path, s.reason));
        }
        hex::encode(h.finalize())
    }

    /// The entry for a path.
    pub fn file(&self, path: &str) -> Option<&FileEntry> {
        self.files
            .binary_search_by(|f| f.path.as_str().cmp(path))
            .ok()
            .map(|i| &self.files[i])
    }
}

/// Hex sha256 of some bytes (the manifest's own digest, recorded in the metastore).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, size: u64) -> FileEntry {
        FileEntry {
            path: path.into(),
            size,
            sha256: "0".repeat(64),
        }
    }

    #[test]
    fn content_digest_ignores_order_number_and_time() {
        let a = Manifest::new(1, vec![entry("b", 1), entry("a", 2)], vec![]);
        let mut b = Manifest::new(7, vec![entry("a", 2), entry("b", 1)], vec![]);
        b.created_at = "2000-01-01T00:00:00Z".into();
        assert_eq!(a.content_digest(), b.content_digest());
        let c = Manifest::new(1, vec![entry("a", 3), entry("b", 1)], vec![]);
        assert_ne!(a.content_digest(), c.content_digest());
        let back = Manifest::parse(&a.to_bytes()).unwrap();
        assert_eq!(back, a);
        assert_eq!(back.file("b").map(|f| f.size), Some(1));
        assert!(
            Manifest::parse(br#"{"format":"other","save":1,"created_at":"","files":[]}"#).is_none()
        );
    }
}
