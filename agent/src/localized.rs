//! `DEST/.periscope/localized.json`: what was localized, from where, at which revision.
//!
//! The record is the contract between `localize`, which writes it, and those that read what it
//! fetched: a restarted initContainer knows it has nothing to do, and the sidecar and the
//! metastore learn the exact code revision. It holds only redacted URLs. It is rewritten
//! atomically after every published source, so a crash between two sources keeps the first.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fsutil::write_atomic;

/// The folder inside DEST that holds Periscope's own files (the record, staging).
pub const META_DIR: &str = ".periscope";

/// The record's file name inside `DEST/.periscope/`.
pub const RECORD_FILE: &str = "localized.json";

/// What identifies the content that was fetched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevisionKind {
    /// A git commit SHA.
    Commit,
    /// The sha256 of the downloaded archive or file.
    Sha256,
    /// A digest over the object store's ETags of every object copied.
    Etags,
}

/// The exact revision of a localized source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revision {
    pub kind: RevisionKind,
    pub id: String,
}

/// One published source. Invariant: `url` is redacted; `patterns` are those of the source's
/// options, so a run with other patterns never takes the tree for unchanged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The folder under DEST.
    pub into: String,
    /// The redacted source URL, with its options.
    pub url: String,
    /// `git`, `http` or `object`.
    pub kind: String,
    pub revision: Revision,
    /// A cheap value the source can be asked for again (commit SHA, ETag) to tell whether it
    /// changed without fetching it; `None` when the source offers none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// The include and exclude patterns the tree was localized with.
    #[serde(flatten)]
    pub patterns: Patterns,
    pub bytes: u64,
    pub files: u64,
    pub seconds: f64,
    /// RFC 3339, UTC.
    pub localized_at: String,
}

/// The `#include=` and `#exclude=` patterns of a source, as given; both empty means every file.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Patterns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
}

/// The whole record file.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Record {
    pub version: u32,
    pub sources: Vec<Entry>,
}

impl Record {
    /// The record's path for a destination folder.
    pub fn path(dest: &Path) -> PathBuf {
        dest.join(META_DIR).join(RECORD_FILE)
    }

    /// Reads the record; a missing or unreadable file is an empty record (everything is fetched
    /// again, which is always safe).
    pub fn load(dest: &Path) -> Record {
        let path = Record::path(dest);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable localize record");
                Record::default()
            }),
            Err(_) => Record::default(),
        }
    }

    /// The entry for a folder, if any.
    pub fn get(&self, into: &str) -> Option<&Entry> {
        self.sources.iter().find(|e| e.into == into)
    }

    /// Adds or replaces the entry for `entry.into`.
    pub fn upsert(&mut self, entry: Entry) {
        self.sources.retain(|e| e.into != entry.into);
        self.sources.push(entry);
        self.sources.sort_by(|a, b| a.into.cmp(&b.into));
    }

    /// Writes the record atomically.
    pub fn save(&mut self, dest: &Path) -> io::Result<()> {
        self.version = 1;
        let json = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        write_atomic(&Record::path(dest), &json)
    }
}
