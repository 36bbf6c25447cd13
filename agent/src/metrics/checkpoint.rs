//! What the metrics sources have read, kept in step with the queue so nothing is queued twice.
//!
//! Reading a source and appending what it gave to the queue are two steps, and a crash can fall
//! between them. So the checkpoint records the *intent* first: "the state after this read is
//! valid once the queue's end reaches X" (X = the queue's end plus the size of the one record
//! being appended). Then the record is appended (all or nothing: a torn record is truncated on
//! open). On load, a pending state is adopted exactly when the queue's end reached X, i.e. when its
//! record survived; so no separate commit is needed after the append (the next intent, or a
//! commit when a read produced no items, replaces it). Every append that moves the sources must
//! write its own intent first, or an old intent could be satisfied by another record. An append
//! that leaves the sources where they are (ingest requests) needs none once no intent is waiting
//! (the last one's record is in the queue, or a commit replaced it): the file then gives the same
//! state whatever the queue's end. Written with `fsutil::write_atomic`.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::jsonl::JsonlState;
use super::scalars::ScalarsState;
use crate::fsutil::write_atomic;

/// The checkpoint's file name inside the state folder.
pub const CHECKPOINT_FILE: &str = "metrics-sources.json";

/// Everything the sources have read. Invariant: every item read before these positions is in
/// the queue (or was delivered from it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SourcesState {
    /// Per `--metrics-file` path.
    pub jsonl: BTreeMap<String, JsonlState>,
    pub scalars: ScalarsState,
}

/// A state waiting for its queue record. Invariant: valid iff the queue's end is ≥ `queue_end`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Pending {
    queue_end: u64,
    state: SourcesState,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct OnDisk {
    version: u32,
    committed: SourcesState,
    pending: Option<Pending>,
}

/// The sources' checkpoint file.
#[derive(Debug)]
pub struct SourcesCheckpoint {
    path: PathBuf,
}

impl SourcesCheckpoint {
    /// The checkpoint in `state_dir`.
    pub fn new(state_dir: &Path) -> Self {
        SourcesCheckpoint {
            path: state_dir.join(CHECKPOINT_FILE),
        }
    }

    /// Its path, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The state to resume from, given the queue's end after its own recovery.
    pub fn load(&self, queue_end: u64) -> io::Result<SourcesState> {
        let disk: OnDisk = match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(io::Error::other)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(SourcesState::default()),
            Err(e) => return Err(e),
        };
        Ok(match disk.pending {
            Some(p) if queue_end >= p.queue_end => p.state,
            _ => disk.committed,
        })
    }

    /// Records that `next` is valid once the queue's end reaches `queue_end`; `current` stays
    /// valid until then.
    pub fn intend(
        &self,
        current: &SourcesState,
        next: &SourcesState,
        queue_end: u64,
    ) -> io::Result<()> {
        self.write(&OnDisk {
            version: 1,
            committed: current.clone(),
            pending: Some(Pending {
                queue_end,
                state: next.clone(),
            }),
        })
    }

    /// Records `state` as what was read.
    pub fn commit(&self, state: &SourcesState) -> io::Result<()> {
        self.write(&OnDisk {
            version: 1,
            committed: state.clone(),
            pending: None,
        })
    }

    fn write(&self, disk: &OnDisk) -> io::Result<()> {
        let json = serde_json::to_vec(disk).map_err(io::Error::other)?;
        write_atomic(&self.path, &json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pending_state_counts_only_when_its_record_landed() {
        let dir = tempfile::tempdir().unwrap();
        let cp = SourcesCheckpoint::new(dir.path());
        assert_eq!(cp.load(0).unwrap(), SourcesState::default());
        let mut old = SourcesState::default();
        old.jsonl.insert(
            "a".into(),
            JsonlState {
                offset: 10,
                line: 1,
                bad_lines: 0,
            },
        );
        let mut new = old.clone();
        new.jsonl.get_mut("a").unwrap().offset = 20;
        cp.intend(&old, &new, 100).unwrap();
        assert_eq!(cp.load(99).unwrap(), old);
        assert_eq!(cp.load(100).unwrap(), new);
        cp.commit(&new).unwrap();
        assert_eq!(cp.load(0).unwrap(), new);
    }
}
