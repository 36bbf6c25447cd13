//! The log shipper's durable state: what was shipped of which file, and what is being shipped.
//!
//! Written atomically (`fsutil::write_atomic`) before each upload (the *intent*: this byte range is
//! becoming this object) and after it (the *completion*). After `kill -9` at any moment, a restart
//! finds either no intent (nothing was in flight) or an intent whose object may or may not exist;
//! it uploads that same range to that same key again, which is harmless, and goes on from there.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::identity::{FileId, Fingerprint};
use crate::fsutil::write_atomic;

/// The checkpoint's file name inside the state folder.
pub const CHECKPOINT_FILE: &str = "logs-checkpoint.json";

/// One generation of one log path being followed. Invariant: `shipped` is the end of the last
/// completed chunk; `in_flight`, when set, starts at `shipped`.
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

/// The whole checkpoint. Invariant: at most one `Tracked` per `FileId`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Checkpoint {
    pub version: u32,
    /// Which storage location this state belongs to (a different one starts afresh).
    pub destination: String,
    pub files: Vec<Tracked>,
    /// The last generation number used per logical path.
    pub generations: std::collections::BTreeMap<String, u64>,
    pub losses: Vec<Loss>,
}

impl Checkpoint {
    /// Loads the checkpoint for `destination`; a missing file, or one for another destination, is
    /// a fresh start.
    pub fn load(state_dir: &Path, destination: &str) -> std::io::Result<Checkpoint> {
        let path = state_dir.join(CHECKPOINT_FILE);
        let fresh = Checkpoint {
            version: 1,
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

    /// Writes the checkpoint atomically and durably.
    pub fn save(&self, state_dir: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        write_atomic(&state_dir.join(CHECKPOINT_FILE), &json)
    }

    /// Hands out the next generation number for a logical path.
    pub fn next_generation(&mut self, logical: &str) -> u64 {
        let g = self.generations.entry(logical.to_string()).or_insert(0);
        *g += 1;
        *g
    }
}
