//! The mirror's checkpoint: what is stored of each file, written atomically after every upload.
//!
//! An upload replaces one whole object and the checkpoint is written after it, so after `kill -9`
//! at any moment the checkpoint names either the state before the last upload or the one after
//! it. From the state before, the next upload starts at the same segment again and replaces what
//! that upload stored with the same bytes and perhaps more: nothing is lost, nothing is stored
//! twice, and no more than that one segment is sent again.

use std::collections::BTreeMap;
use std::path::Path as FsPath;

use serde::{Deserialize, Serialize};

use super::plan::Stored;
use crate::fsutil::write_atomic;
use crate::ship::identity::Fingerprint;

/// The checkpoint's file name inside the state folder.
pub const MIRROR_FILE: &str = "tfevents-mirror.json";
const VERSION: u32 = 2;

/// The durable state of one file. Invariant: `stored.stored > 0` only once `fingerprint` was taken
/// (except for state carried over from the first checkpoint format, which had none).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FileState {
    #[serde(flatten)]
    pub stored: Stored,
    /// The file's first bytes, to notice a different file at the same path.
    #[serde(default)]
    pub fingerprint: Option<Fingerprint>,
    /// The segments of an earlier file at this path must be deleted before anything is uploaded.
    #[serde(default)]
    pub purge: bool,
}

/// The whole checkpoint, keyed by stored name (see [`Layout::name`](super::layout::Layout::name)).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MirrorState {
    pub version: u32,
    /// The worker prefix these files are stored under; another one starts afresh.
    pub prefix: String,
    pub files: BTreeMap<String, FileState>,
}

/// The first format: a map from name to `{uploaded, boundary}`, each file stored whole under its
/// name, which is the first segment of the current layout.
#[derive(Deserialize)]
struct FirstFormat {
    uploaded: u64,
}

impl MirrorState {
    /// Reads the checkpoint for `prefix`. A missing or unreadable one, or one for another prefix,
    /// is a fresh start (which uploads again, never loses).
    pub fn load(state_dir: &FsPath, prefix: &str) -> MirrorState {
        let fresh = MirrorState {
            version: VERSION,
            prefix: prefix.to_owned(),
            files: BTreeMap::new(),
        };
        let Ok(bytes) = std::fs::read(state_dir.join(MIRROR_FILE)) else {
            return fresh;
        };
        if let Ok(state) = serde_json::from_slice::<MirrorState>(&bytes) {
            if state.prefix != prefix {
                tracing::warn!(old = %state.prefix, new = %prefix,
                    "the tf.events checkpoint is for another destination; mirroring afresh");
                return fresh;
            }
            return state;
        }
        match serde_json::from_slice::<BTreeMap<String, FirstFormat>>(&bytes) {
            Ok(first) => MirrorState {
                files: first
                    .into_iter()
                    .map(|(name, f)| {
                        let stored = Stored {
                            open: None,
                            stored: f.uploaded,
                        };
                        (
                            name,
                            FileState {
                                stored,
                                ..FileState::default()
                            },
                        )
                    })
                    .collect(),
                ..fresh
            },
            Err(e) => {
                tracing::warn!(error = %e, "the tf.events checkpoint is unreadable; mirroring afresh");
                fresh
            }
        }
    }

    /// Writes the checkpoint atomically and durably (making the state folder if it is not there
    /// yet: there was no room for it at start).
    pub fn save(&self, state_dir: &FsPath) -> std::io::Result<()> {
        let json = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        std::fs::create_dir_all(state_dir)?;
        write_atomic(&state_dir.join(MIRROR_FILE), &json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_another_prefix_starts_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = MirrorState::load(dir.path(), "p/e/w");
        assert!(state.files.is_empty());
        state.files.insert(
            "run/events.out.tfevents.1".into(),
            FileState {
                stored: Stored {
                    open: Some(100),
                    stored: 150,
                },
                fingerprint: None,
                purge: false,
            },
        );
        state.save(dir.path()).unwrap();
        assert_eq!(MirrorState::load(dir.path(), "p/e/w"), state);
        assert!(MirrorState::load(dir.path(), "p/e/other").files.is_empty());
    }

    #[test]
    fn the_first_format_is_read_as_one_closed_segment_per_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(MIRROR_FILE),
            r#"{"run/events.out.tfevents.1":{"uploaded":40,"boundary":90}}"#,
        )
        .unwrap();
        let state = MirrorState::load(dir.path(), "p/e/w");
        assert_eq!(
            state.files["run/events.out.tfevents.1"].stored,
            Stored {
                open: None,
                stored: 40
            }
        );
        assert_eq!(state.prefix, "p/e/w");
    }
}
