//! The log shipper's durable state: what was shipped of which file, and what is being shipped.
//!
//! Written atomically (`fsutil::write_atomic`) before each upload (the *intent*: this byte range is
//! becoming this object) and after it (the *completion*). After `kill -9` at any moment, a restart
//! finds either no intent (nothing was in flight) or an intent whose object may or may not exist;
//! it uploads that same range to that same key again, which is harmless, and goes on from there.
//!
//! Besides the generations being read, it remembers the files that hold bytes already stored (a
//! rotated file read to its end, a copy or gzip of one), which name each matched path holds now,
//! and the links not yet written, so a file is recognised whatever name it has after a restart.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::identity::{FileId, Fingerprint, Prefix, Window};
use super::key::Link;
use super::stored::relative_key;
use crate::fsutil::write_atomic;

/// The checkpoint's file name inside the state folder.
pub const CHECKPOINT_FILE: &str = "logs-checkpoint.json";

/// One generation of one log path being followed. Invariant: `shipped` is the end of the last
/// completed chunk; `in_flight`, when set, starts at `shipped`; `crc` is the CRC32C of the bytes
/// `[0, shipped)` and `tail` the window that ends at `shipped`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tracked {
    /// The path relative to its glob's base, as stored.
    pub logical: String,
    pub generation: u64,
    /// Where the file was last seen.
    pub path: PathBuf,
    pub id: FileId,
    pub fingerprint: Fingerprint,
    /// Bytes from the start of the file that are safely stored.
    pub shipped: u64,
    /// The byte range being uploaded, if any: `[shipped, end)`.
    pub in_flight: Option<u64>,
    /// The largest size seen, to tell how much is lost if the file disappears.
    pub seen_size: u64,
    /// The file no longer lives at `path` (rotated away or deleted).
    #[serde(default)]
    pub detached: bool,
    #[serde(default)]
    pub crc: u32,
    #[serde(default)]
    pub tail: Window,
    /// The prefixes at the ends of the last few chunks.
    #[serde(default)]
    pub ends: Vec<Prefix>,
    /// `path` is a gzip file whose decompressed bytes are this generation's.
    #[serde(default)]
    pub gzip: bool,
}

impl Tracked {
    /// What is stored of this generation.
    pub fn stored(&self) -> Prefix {
        Prefix {
            len: self.shipped,
            crc: self.crc,
        }
    }
}

/// A file that is no longer read and holds the first `held.len` bytes of a stored generation: a
/// rotated file read to its end, or a copy of a generation (`copytruncate`) or its gzip
/// (`compress`). Invariant: `held` and `ends` are prefixes of that generation's stored bytes, and
/// `tail` the window of the file's content that ends at `held.len`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Held {
    /// The generation whose bytes the file holds.
    pub logical: String,
    pub generation: u64,
    pub path: PathBuf,
    pub id: FileId,
    pub fingerprint: Fingerprint,
    pub held: Prefix,
    pub tail: Window,
    pub ends: Vec<Prefix>,
    /// A copy: bytes it gains later are not its generation's. Otherwise it is the file the
    /// generation was read from, and bytes appended to it later are shipped.
    pub copy: bool,
    pub gzip: bool,
    /// The file's size (compressed, for a gzip) when it was last looked at.
    pub seen: u64,
    /// Not seen at `path` any more, or its inode holds another file now; kept a while (what it
    /// knows of the bytes, not its inode) so a copy or gzip of them is still recognised.
    pub gone: bool,
}

impl Held {
    /// Whether the file, found again, holds what it held (same first bytes, same bytes before the
    /// end of what it holds; a gzip, same size and last bytes).
    pub fn still_holds(&self, file: &std::fs::File) -> bool {
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        if self.gzip {
            return size == self.seen && self.tail.matches(file).unwrap_or(false);
        }
        size >= self.held.len
            && self.fingerprint.matches(file).unwrap_or(false)
            && self.tail.matches(file).unwrap_or(false)
    }
}

/// The file a matched path holds now, the generation of that path it is, and the stored
/// generation whose bytes it holds (itself when `origin`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Occupant {
    pub id: FileId,
    pub generation: u64,
    /// The generation holds its own chunks (the file was first seen at this path).
    pub origin: bool,
    pub from: String,
    pub from_generation: u64,
}

/// Bytes that were written to a log but could not be shipped, reported and kept here so they are
/// never lost silently.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Loss {
    pub logical: String,
    pub generation: u64,
    pub bytes: u64,
    pub reason: String,
}

/// How many files that are gone are still remembered (the oldest are forgotten first).
pub const GONE_KEPT: usize = 64;

/// The whole checkpoint. Invariant: at most one `Tracked` or `Held` that is not `gone` per
/// `FileId` (a gone record's inode number may be another file's by now).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Checkpoint {
    pub version: u32,
    /// Which storage location this state belongs to (a different one starts afresh).
    pub destination: String,
    pub files: Vec<Tracked>,
    /// The last generation number used per logical path.
    pub generations: std::collections::BTreeMap<String, u64>,
    pub losses: Vec<Loss>,
    #[serde(default)]
    pub held: Vec<Held>,
    #[serde(default)]
    pub names: std::collections::BTreeMap<String, Occupant>,
    /// Links recorded and not yet known to be stored.
    #[serde(default)]
    pub links: Vec<Link>,
    /// The highest generation earlier attempts of the worker stored, per log path (by
    /// [`relative_key`]): new generations are numbered after them.
    #[serde(default)]
    pub stored_before: std::collections::BTreeMap<String, u64>,
    /// The attempt whose earlier attempts' generations are in `stored_before` (0: none looked for).
    #[serde(default)]
    pub listed_attempt: u32,
}

impl Checkpoint {
    /// Loads the checkpoint for `destination`; a missing file, or one for another destination, is
    /// a fresh start.
    pub fn load(state_dir: &Path, destination: &str) -> std::io::Result<Checkpoint> {
        let path = state_dir.join(CHECKPOINT_FILE);
        let fresh = Checkpoint {
            version: 2,
            destination: destination.to_string(),
            ..Checkpoint::default()
        };
        match std::fs::read(&path) {
            Ok(bytes) => {
                let cp: Checkpoint =
                    serde_json::from_slice(&bytes).map_err(std::io::Error::other)?;
                if cp.destination != destination {
                    tracing::warn!(old = %cp.destination, new = %destination,
                        "the state folder belongs to another destination; starting afresh");
                    return Ok(fresh);
                }
                Ok(cp)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(fresh),
            Err(e) => Err(e),
        }
    }

    /// Writes the checkpoint atomically and durably, making the state folder if it is not there
    /// (a disk that had no room for it at start).
    pub fn save(&self, state_dir: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        let path = state_dir.join(CHECKPOINT_FILE);
        match write_atomic(&path, &json) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(state_dir)?;
                write_atomic(&path, &json)
            }
            done => done,
        }
    }

    /// Hands out the next generation number for a logical path.
    /// Earlier attempts' generations of that path come first.
    pub fn next_generation(&mut self, logical: &str) -> u64 {
        let before = (self.stored_before.get(&relative_key(logical)).copied()).unwrap_or(0);
        let g = self.generations.entry(logical.to_string()).or_insert(0);
        *g = (*g).max(before) + 1;
        *g
    }
}
