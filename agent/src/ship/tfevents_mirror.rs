//! Mirroring TensorBoard event files to storage, so `tensorboard --logdir <URL>/<experiment>` works.
//!
//! Each event file under a `--tfevents` folder is uploaded whole to
//! `<worker prefix>/tfevents/<path relative to the folder>`, replacing the previous copy, at most
//! every `interval` while it grows, and once more when draining. The upload always ends at a
//! record boundary found by the TFRecord reader, so a reader of the stored copy never meets a
//! torn record; the bytes after it go up with the next upload. The last uploaded boundary of each
//! file is checkpointed, so a restart does not upload unchanged files again.
//!
//! This module never parses events (that is [`tfevents`](crate::tfevents)) and never prints.

use std::collections::BTreeMap;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::path::{Path, PathPart};
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use super::logs::ShipError;
use crate::fsutil::write_atomic;
use crate::retry::{RetryPolicy, Verdict};
use crate::tfevents::{discover, Next, RecordReader};

/// The checkpoint's file name inside the state folder.
pub const MIRROR_FILE: &str = "tfevents-mirror.json";
/// The folder under a worker's prefix that holds the mirror.
pub const TFEVENTS_DIR: &str = "tfevents";

/// How the mirror behaves.
#[derive(Debug, Clone)]
pub struct MirrorConfig {
    /// Folders searched (recursively) for files whose name contains `tfevents`.
    pub roots: Vec<PathBuf>,
    /// `<prefix>/<experiment>/<worker>` inside the store.
    pub worker_prefix: Path,
    pub state_dir: PathBuf,
    /// Least time between two uploads of one growing file.
    pub interval: Duration,
    pub retry: RetryPolicy,
}

/// Durable per-file state. Invariant: `uploaded <= boundary`, both record boundaries.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct FileState {
    uploaded: u64,
    boundary: u64,
}

/// One followed event file: its reader sits at `state.boundary`.
struct Followed {
    path: PathBuf,
    key: Path,
    reader: Option<RecordReader>,
    state: FileState,
    last_upload: Option<Instant>,
}

/// Mirrors event files. See the module docs.
pub struct TfeventsMirror {
    cfg: MirrorConfig,
    store: Arc<dyn ObjectStore>,
    files: BTreeMap<String, Followed>,
    failures: u32,
    retry_at: Option<Instant>,
}

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MirrorReport {
    pub uploads: u64,
    /// Bytes of whole records not yet in storage.
    pub backlog: u64,
}

impl TfeventsMirror {
    /// Loads the checkpoint; files are found on the first pass.
    pub fn open(
        cfg: MirrorConfig,
        store: Arc<dyn ObjectStore>,
    ) -> Result<TfeventsMirror, ShipError> {
        std::fs::create_dir_all(&cfg.state_dir).map_err(|error| ShipError::Checkpoint {
            dir: cfg.state_dir.clone(),
            error,
        })?;
        let saved: BTreeMap<String, FileState> =
            match std::fs::read(cfg.state_dir.join(MIRROR_FILE)) {
                Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
                Err(_) => BTreeMap::new(),
            };
        let mut mirror = TfeventsMirror {
            cfg,
            store,
            files: BTreeMap::new(),
            failures: 0,
            retry_at: None,
        };
        mirror.discover(&saved);
        Ok(mirror)
    }

    /// Whether any whole record is not yet stored.
    pub fn has_backlog(&self) -> bool {
        self.files
            .values()
            .any(|f| f.state.boundary > f.state.uploaded)
    }

    /// One pass: find new files, advance each reader to its last whole record, and upload files
    /// that grew (all of them when `flush`).
    pub async fn tick(&mut self, flush: bool) -> Result<MirrorReport, ShipError> {
        self.discover(&BTreeMap::new());
        let mut report = MirrorReport::default();
        for f in self.files.values_mut() {
            advance(f);
        }
        let now = Instant::now();
        if self.retry_at.is_none_or(|t| now >= t) {
            let keys: Vec<String> = self.files.keys().cloned().collect();
            for rel in keys {
                let due = {
                    let f = &self.files[&rel];
                    f.state.boundary > f.state.uploaded
                        && (flush
                            || f.last_upload
                                .is_none_or(|t| now.duration_since(t) >= self.cfg.interval))
                };
                if !due {
                    continue;
                }
                if self.upload(&rel).await {
                    report.uploads += 1;
                    self.save()?;
                } else {
                    break;
                }
            }
        }
        report.backlog = self
            .files
            .values()
            .map(|f| f.state.boundary - f.state.uploaded)
            .sum();
        Ok(report)
    }

    fn discover(&mut self, saved: &BTreeMap<String, FileState>) {
        for root in &self.cfg.roots {
            let Ok(found) = discover(root) else { continue };
            for ev in found {
                let Ok(rel) = ev.path.strip_prefix(root) else {
                    continue;
                };
                let rel = rel.to_string_lossy().replace('\\', "/");
                if self.files.contains_key(&rel) {
                    continue;
                }
                let state = saved.get(&rel).cloned().unwrap_or_default();
                tracing::info!(file = %rel, "mirroring event file");
                let mut parts: Vec<PathPart<'static>> = self
                    .cfg
                    .worker_prefix
                    .parts()
                    .map(|p| p.as_ref().to_string().into())
                    .collect();
                parts.push(TFEVENTS_DIR.into());
                parts.extend(rel.split('/').map(|s| PathPart::from(s.to_string())));
                self.files.insert(
                    rel,
                    Followed {
                        path: ev.path.clone(),
                        key: Path::from_iter(parts),
                        reader: None,
                        state,
                        last_upload: None,
                    },
                );
            }
        }
    }

    /// Uploads `[0, boundary)` of one file. Returns false when storage failed.
    async fn upload(&mut self, rel: &str) -> bool {
        let Some(f) = self.files.get_mut(rel) else {
            return false;
        };
        let boundary = f.state.boundary;
        let bytes = match read_prefix(&f.path, boundary) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(file = %rel, error = %e, "cannot read event file");
                return true;
            }
        };
        match self.store.put(&f.key, PutPayload::from(bytes)).await {
            Ok(_) => {
                f.state.uploaded = boundary;
                f.last_upload = Some(Instant::now());
                self.failures = 0;
                self.retry_at = None;
                true
            }
            Err(e) => {
                self.failures += 1;
                let wait = self.cfg.retry.delay(self.failures, Verdict::Transient);
                self.retry_at = Some(Instant::now() + wait);
                tracing::warn!(file = %rel, error = %crate::storage::scrub(&e.to_string()),
                    retry_in_ms = wait.as_millis() as u64, "event file upload failed; will retry");
                false
            }
        }
    }

    fn save(&self) -> Result<(), ShipError> {
        let states: BTreeMap<&String, &FileState> =
            self.files.iter().map(|(k, f)| (k, &f.state)).collect();
        let json = serde_json::to_vec(&states).map_err(|e| ShipError::Checkpoint {
            dir: self.cfg.state_dir.clone(),
            error: std::io::Error::other(e),
        })?;
        write_atomic(&self.cfg.state_dir.join(MIRROR_FILE), &json).map_err(|error| {
            ShipError::Checkpoint {
                dir: self.cfg.state_dir.clone(),
                error,
            }
        })
    }
}

/// Moves the file's boundary to the end of its last whole record.
fn advance(f: &mut Followed) {
    let size = std::fs::metadata(&f.path).map(|m| m.len()).unwrap_or(0);
    if size < f.state.boundary {
        // Replaced by a shorter file: start over.
        tracing::warn!(file = %f.path.display(), "event file shrank; mirroring it again from the start");
        f.state = FileState::default();
        f.reader = None;
    }
    if f.reader.is_none() {
        f.reader = RecordReader::open(&f.path, f.state.boundary).ok();
    }
    let Some(reader) = f.reader.as_mut() else {
        return;
    };
    loop {
        match reader.next_record() {
            Ok(Next::Record(_)) | Ok(Next::Skipped(_)) => {}
            Ok(Next::Pending) | Err(_) => break,
            Ok(Next::Stopped(damage)) => {
                tracing::warn!(file = %f.path.display(), ?damage,
                    "event file framing is broken; mirroring it up to the damage");
                break;
            }
        }
    }
    f.state.boundary = reader.offset();
}

fn read_prefix(path: &FsPath, len: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut buf = Vec::with_capacity(len as usize);
    std::fs::File::open(path)?.take(len).read_to_end(&mut buf)?;
    if (buf.len() as u64) < len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "event file shrank while reading",
        ));
    }
    Ok(buf)
}
