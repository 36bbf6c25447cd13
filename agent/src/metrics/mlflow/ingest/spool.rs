//! The endpoint's spool: artifacts a client uploads, kept on local disk until they are in
//! storage, so an upload is acknowledged as soon as it is durable here and never waits on the
//! object store.
//!
//! Layout under `<state-dir>/mlflow-artifacts/`:
//! * `incoming/<id>`: a body being received (removed at start: its client got no answer);
//! * `uploads/<id>/`: a multipart upload a client is sending (`upload.json`, the parts in `data`
//!   at their offsets, and `parts.json` listing the parts received), kept across restarts so
//!   the client's retries still find it;
//! * `pending/<seq>.data` and `pending/<seq>.json`: a committed file and what it is. Both are
//!   fsynced (in parallel), then the data is renamed into place and the folder fsynced, and only
//!   then is the client answered: an entry counts when both are there and its `.json` reads
//!   whole; anything else is removed at start (its client got no answer). `<seq>` grows, so for
//!   each artifact the highest committed entry is its latest content;
//! * `pending/<seq>.upload.json`: the journal of the entry's resumable multipart upload to
//!   storage (see [`crate::artifacts::upload`]);
//! * names starting with `.`: temporary files of atomic writes, removed at start.
//!
//! A free-space check refuses a file that would leave less than [`RESERVE`] bytes on the spool's
//! filesystem (the metrics queue lives there too), before a byte is written when the size is
//! known; a write that runs out of space anyway removes what it wrote. This module knows neither
//! HTTP nor storage: the handlers feed it bytes, the uploader takes entries from it.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};

use crate::fsutil::{start_writeback, sync_dir, write_atomic};
use crate::metrics::model::{now_ms, ModelRef};

/// Free bytes always left on the spool's filesystem.
pub const RESERVE: u64 = 16 << 20;
/// Bytes gathered from a body before they are written out.
const WRITE_BUFFER: usize = 1 << 20;
/// Bytes written between two writeback hints, so the final fsync has little left to do.
const WRITEBACK_EVERY: u64 = 16 << 20;

/// Which artifact a file is. Invariant: `path` is relative, `/`-separated, of normal segments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// The run the file belongs to (a logged model's source run, if any).
    pub run: Option<String>,
    /// The run's worker_index.
    pub index: String,
    /// The logged model whose artifacts hold the file; `None`: the run's own.
    pub model: Option<ModelRef>,
    pub path: String,
}

impl Target {
    /// The folder holding the run's (or the model's) artifacts, relative to the worker's prefix
    /// in storage, ending in `/`: `mlflow/<run>/artifacts/` or `mlflow/models/<id>/artifacts/`.
    pub fn folder(&self) -> String {
        folder(
            self.run.as_deref(),
            self.model.as_ref().map(|m| m.id.as_str()),
        )
    }

    /// The file's key relative to the worker's prefix.
    pub fn key(&self) -> String {
        format!("{}{}", self.folder(), self.path)
    }
}

/// The artifacts folder of a run or a logged model, relative to the worker's prefix.
pub fn folder(run: Option<&str>, model: Option<&str>) -> String {
    match (model, run) {
        (Some(m), _) => format!("mlflow/models/{m}/artifacts/"),
        (None, Some(r)) => format!("mlflow/{r}/artifacts/"),
        (None, None) => "mlflow/unowned/artifacts/".into(),
    }
}

/// A committed entry, as its `.json` says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub target: Target,
    pub size: u64,
    pub received_ms: i64,
}

/// Why the spool could not take or give a file.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error(
        "the artifact needs {need} bytes but the state folder's disk has {free} bytes free \
         (and keeps {RESERVE} for the metrics queue)"
    )]
    NoSpace { need: u64, free: u64 },
    #[error("the state folder's disk is full: cannot {what} {}", path.display())]
    DiskFull { what: &'static str, path: PathBuf },
    #[error("cannot {what} in the artifact spool {}: {error}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        error: std::io::Error,
    },
    #[error("the request body broke off: {0}")]
    Body(String),
    #[error("{0}")]
    Upload(String),
}

/// The spool's folders under its root.
const FOLDERS: [&str; 3] = ["incoming", "uploads", "pending"];

fn make_folders(root: &Path) -> Result<(), SpoolError> {
    for sub in FOLDERS {
        let dir = root.join(sub);
        std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
    }
    Ok(())
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl Fn(std::io::Error) -> SpoolError + 'a {
    move |error| {
        if error.raw_os_error() == Some(libc::ENOSPC) {
            SpoolError::DiskFull {
                what,
                path: path.to_path_buf(),
            }
        } else {
            SpoolError::Io {
                what,
                path: path.to_path_buf(),
                error,
            }
        }
    }
}

/// A multipart upload a client is sending. Invariant: `parts` maps each part received (1-based)
/// to its length; every part but the last has length `chunk`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Multipart {
    target: Target,
    num_parts: u64,
    chunk: Option<u64>,
    parts: BTreeMap<u64, u64>,
    created_ms: i64,
}

/// What the spool holds. Invariant: `latest[key]` is the highest committed seq of that key, and
/// every seq in `latest` is in `entries`.
#[derive(Debug, Default)]
struct Index {
    entries: BTreeMap<u64, Entry>,
    latest: HashMap<String, u64>,
    uploads: HashMap<String, Multipart>,
}

/// The spool. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    /// Whether the folders below `root` exist (they could not be made at open without room).
    made: AtomicBool,
    next: AtomicU64,
    index: Mutex<Index>,
    /// Held while a multipart upload's `parts.json` is written: parts arrive in parallel, and
    /// each write must be the latest state, whole.
    saving: tokio::sync::Mutex<()>,
}

/// A file being received (removed unless committed).
pub struct Incoming {
    spool: Spool,
    path: PathBuf,
    file: Option<std::fs::File>,
    written: u64,
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Spool {
    /// Opens the spool under `root`, removing what was never committed.
    pub fn open(root: &Path) -> Result<Spool, SpoolError> {
        if let Err(e) = make_folders(root) {
            // Never made (a state folder with no room at the first start): it holds nothing, and
            // is made when the first file comes.
            let never_made = FOLDERS.iter().all(|sub| !root.join(sub).exists());
            if !(matches!(e, SpoolError::DiskFull { .. }) && never_made) {
                return Err(e);
            }
            tracing::warn!(error = %e, "the state folder has no room for the MLflow-compatible \
                endpoint's artifact spool; artifact uploads are refused until there is room");
            return Ok(Spool::new(root, Index::default(), 1, false));
        }
        let incoming = root.join("incoming");
        for e in std::fs::read_dir(&incoming).map_err(io("read", &incoming))? {
            let e = e.map_err(io("read", &incoming))?;
            let _ = std::fs::remove_file(e.path());
        }
        let mut index = Index::default();
        let pending = root.join("pending");
        let mut data = Vec::new();
        for e in std::fs::read_dir(&pending).map_err(io("read", &pending))? {
            let path = e.map_err(io("read", &pending))?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            if name.starts_with('.') {
                // A temporary file of a write cut short by a kill (see `write_atomic`).
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let Some((seq, ext)) = name.split_once('.') else {
                continue;
            };
            let Ok(seq) = seq.parse::<u64>() else {
                continue;
            };
            match ext {
                "json" => match std::fs::read(&path)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Entry>(&b).ok())
                {
                    Some(entry) => {
                        index.entries.insert(seq, entry);
                    }
                    // Cut short by a kill before it was fsynced: never answered.
                    None => {
                        let _ = std::fs::remove_file(&path);
                    }
                },
                "data" => data.push((seq, path)),
                _ => {}
            }
        }
        for (seq, path) in &data {
            if !index.entries.contains_key(seq) {
                // Renamed into place but never described: its client got no answer.
                let _ = std::fs::remove_file(path);
            }
        }
        let described: Vec<u64> = index.entries.keys().copied().collect();
        for seq in described {
            if !data.iter().any(|(s, _)| *s == seq) {
                // Described, but its data never renamed into place: never answered either.
                index.entries.remove(&seq);
                let _ = std::fs::remove_file(pending.join(format!("{seq:020}.json")));
            }
        }
        for (seq, entry) in &index.entries {
            index.latest.insert(entry.target.key(), *seq);
        }
        let uploads = root.join("uploads");
        for e in std::fs::read_dir(&uploads).map_err(io("read", &uploads))? {
            let dir = e.map_err(io("read", &uploads))?.path();
            let id = dir
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            match std::fs::read(dir.join("parts.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<Multipart>(&b).ok())
            {
                Some(m) => {
                    index.uploads.insert(id, m);
                }
                None => {
                    let _ = std::fs::remove_dir_all(&dir);
                }
            }
        }
        let next = index.entries.keys().next_back().map_or(1, |s| s + 1);
        if !index.entries.is_empty() {
            tracing::info!(
                files = index.entries.len(),
                "artifacts received before a restart will be stored"
            );
        }
        Ok(Spool::new(root, index, next, true))
    }

    fn new(root: &Path, index: Index, next: u64, made: bool) -> Spool {
        Spool {
            inner: Arc::new(Inner {
                root: root.to_path_buf(),
                made: AtomicBool::new(made),
                next: AtomicU64::new(next),
                index: Mutex::new(index),
                saving: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// Makes the spool's folders if opening could not (see [`Spool::open`]).
    fn made(&self) -> Result<(), SpoolError> {
        if !self.inner.made.load(Ordering::Acquire) {
            make_folders(&self.inner.root)?;
            self.inner.made.store(true, Ordering::Release);
        }
        Ok(())
    }

    fn index(&self) -> MutexGuard<'_, Index> {
        // The index is rebuilt from disk at every start; a panic while it was held leaves it as
        // the panicking thread left it, which is still a subset of what is on disk.
        self.inner
            .index
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn pending(&self) -> PathBuf {
        self.inner.root.join("pending")
    }

    /// The data file of entry `seq`.
    pub fn data_path(&self, seq: u64) -> PathBuf {
        self.pending().join(format!("{seq:020}.data"))
    }

    fn json_path(&self, seq: u64) -> PathBuf {
        self.pending().join(format!("{seq:020}.json"))
    }

    /// The journal of entry `seq`'s resumable upload to storage.
    pub fn journal_path(&self, seq: u64) -> PathBuf {
        self.pending().join(format!("{seq:020}.upload.json"))
    }

    /// Free bytes on the spool's filesystem.
    pub fn free_space(&self) -> u64 {
        crate::fsutil::free_space(&self.inner.root).unwrap_or(u64::MAX)
    }

    /// Refuses `need` more bytes when they would leave less than [`RESERVE`] free.
    pub fn check_space(&self, need: u64) -> Result<(), SpoolError> {
        let free = self.free_space();
        if need.saturating_add(RESERVE) > free {
            return Err(SpoolError::NoSpace { need, free });
        }
        Ok(())
    }

    /// Starts receiving a file.
    pub fn receive(&self) -> Result<Incoming, SpoolError> {
        self.made()?;
        let path = self
            .inner
            .root
            .join("incoming")
            .join(super::registry::new_id());
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io("create", &path))?;
        Ok(Incoming {
            spool: self.clone(),
            path,
            file: Some(file),
            written: 0,
        })
    }

    /// Commits the data file at `data` (on the spool's filesystem) as the latest content of
    /// `target`; returns its seq. Its description is written beside it, both are made durable at
    /// once (two fsyncs in parallel, which the filesystem's journal commits together), then the
    /// data is renamed into place and the folder fsynced: a description without its data is
    /// removed at start, so the entry counts only once both are there.
    async fn commit_file(
        &self,
        data: PathBuf,
        target: Target,
        size: u64,
    ) -> Result<u64, SpoolError> {
        let seq = self.inner.next.fetch_add(1, Ordering::SeqCst);
        let entry = Entry {
            target,
            size,
            received_ms: now_ms(),
        };
        // Serializing a struct of strings and numbers cannot fail.
        let json = serde_json::to_vec(&entry).unwrap_or_default();
        let (json_path, dest) = (self.json_path(seq), self.data_path(seq));
        let task = |e: tokio::task::JoinError| SpoolError::Upload(e.to_string());
        let synced = {
            let data = data.clone();
            tokio::task::spawn_blocking(move || {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&data)
                    .and_then(|f| f.sync_data())
            })
        };
        let described = {
            let json_path = json_path.clone();
            tokio::task::spawn_blocking(move || {
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&json_path)?;
                std::io::Write::write_all(&mut f, &json)?;
                f.sync_all()
            })
        };
        let (synced, described) = tokio::join!(synced, described);
        let placed = match (synced.map_err(task)?, described.map_err(task)?) {
            (Ok(()), Ok(())) => {
                let (dest, pending) = (dest.clone(), self.pending());
                tokio::task::spawn_blocking(move || {
                    std::fs::rename(&data, &dest)?;
                    sync_dir(&pending)
                })
                .await
                .map_err(task)?
            }
            (Err(e), _) | (_, Err(e)) => Err(e),
        };
        if let Err(e) = placed {
            let _ = std::fs::remove_file(&json_path);
            let _ = std::fs::remove_file(&dest);
            return Err(io("commit", &dest)(e));
        }
        let mut index = self.index();
        index.latest.insert(entry.target.key(), seq);
        index.entries.insert(seq, entry);
        Ok(seq)
    }

    /// The latest committed entry of `key`: its seq, data file and size.
    pub fn latest(&self, key: &str) -> Option<(u64, PathBuf, u64)> {
        let index = self.index();
        let seq = *index.latest.get(key)?;
        let size = index.entries.get(&seq)?.size;
        Some((seq, self.data_path(seq), size))
    }

    /// The latest entries whose key starts with `prefix`, as (key, size).
    pub fn latest_under(&self, prefix: &str) -> Vec<(String, u64)> {
        let index = self.index();
        index
            .latest
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .filter_map(|(k, seq)| Some((k.clone(), index.entries.get(seq)?.size)))
            .collect()
    }

    /// Committed entries in seq order, but those a later entry of the same key replaced
    /// (which are dropped from the spool) and those in `busy`.
    pub fn ready(&self, busy: &std::collections::HashSet<u64>) -> Vec<(u64, Entry)> {
        let mut index = self.index();
        let replaced: Vec<u64> = index
            .entries
            .iter()
            .filter(|(seq, e)| {
                !busy.contains(seq) && index.latest.get(&e.target.key()) != Some(seq)
            })
            .map(|(seq, _)| *seq)
            .collect();
        for seq in replaced {
            index.entries.remove(&seq);
            self.remove_files(seq);
        }
        index
            .entries
            .iter()
            .filter(|(seq, _)| !busy.contains(seq))
            .map(|(seq, e)| (*seq, e.clone()))
            .collect()
    }

    /// True when nothing is waiting to be stored.
    pub fn is_empty(&self) -> bool {
        self.index().entries.is_empty()
    }

    /// Files and bytes waiting to be stored.
    pub fn backlog(&self) -> (u64, u64) {
        let index = self.index();
        (
            index.entries.len() as u64,
            index.entries.values().map(|e| e.size).sum(),
        )
    }

    /// Forgets entry `seq` once it is stored (and recorded).
    pub fn done(&self, seq: u64) {
        let mut index = self.index();
        if let Some(entry) = index.entries.remove(&seq) {
            let key = entry.target.key();
            if index.latest.get(&key) == Some(&seq) {
                index.latest.remove(&key);
            }
        }
        drop(index);
        self.remove_files(seq);
    }

    fn remove_files(&self, seq: u64) {
        // The description goes first: a data file without one is removed at the next start.
        for path in [
            self.json_path(seq),
            self.journal_path(seq),
            self.data_path(seq),
        ] {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "cannot remove a stored artifact from the spool")
                }
            }
        }
    }

    // ---- multipart uploads ----

    /// The folder of upload `id`. Ids are made here (32 hex digits); anything else, which only a
    /// request could bring, names a folder that never exists.
    fn upload_dir(&self, id: &str) -> PathBuf {
        let safe = id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit());
        let name = if safe { id } else { "not-an-upload" };
        self.inner.root.join("uploads").join(name)
    }

    /// Starts a multipart upload of `num_parts` parts; returns its id.
    pub fn create_upload(&self, target: Target, num_parts: u64) -> Result<String, SpoolError> {
        self.made()?;
        let id = super::registry::new_id();
        let dir = self.upload_dir(&id);
        std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        let m = Multipart {
            target,
            num_parts,
            chunk: None,
            parts: BTreeMap::new(),
            created_ms: now_ms(),
        };
        let data = dir.join("data");
        std::fs::File::create(&data).map_err(io("create", &data))?;
        self.save_upload(&id, &m)?;
        self.index().uploads.insert(id.clone(), m);
        Ok(id)
    }

    fn save_upload(&self, id: &str, m: &Multipart) -> Result<(), SpoolError> {
        let path = self.upload_dir(id).join("parts.json");
        // Serializing a struct of strings and numbers cannot fail.
        let json = serde_json::to_vec(m).unwrap_or_default();
        write_atomic(&path, &json).map_err(io("record a part", &path))
    }

    /// The target of a multipart upload.
    pub fn upload_target(&self, id: &str) -> Option<Target> {
        self.index().uploads.get(id).map(|m| m.target.clone())
    }

    /// Receives part `part` (1-based) of upload `id`, `len` bytes, durably.
    pub async fn write_part<S, E>(
        &self,
        id: &str,
        part: u64,
        len: u64,
        body: S,
    ) -> Result<(), SpoolError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let (num_parts, chunk) = {
            let index = self.index();
            let m = index
                .uploads
                .get(id)
                .ok_or_else(|| SpoolError::Upload(format!("no multipart upload {id}")))?;
            (m.num_parts, m.chunk)
        };
        if part == 0 || part > num_parts {
            drain(body).await;
            return Err(SpoolError::Upload(format!(
                "part {part} of an upload of {num_parts} parts"
            )));
        }
        if let Err(e) = self.check_space(len) {
            drain(body).await;
            return Err(e);
        }
        let last = part == num_parts;
        // Every part but the last is one chunk long, so a non-last part says the chunk size; the
        // last part's place is known once another part said it (else it waits in a file of its
        // own until completion).
        let chunk = match (chunk, last) {
            (Some(c), false) if c != len => {
                drain(body).await;
                return Err(SpoolError::Upload(format!(
                    "part {part} is {len} bytes, the other parts {c}"
                )));
            }
            (Some(c), _) => Some(c),
            (None, false) => Some(len),
            (None, true) if num_parts == 1 => Some(len),
            (None, true) => None,
        };
        let dir = self.upload_dir(id);
        let (path, offset) = match chunk {
            Some(c) => (dir.join("data"), (part - 1) * c),
            None => (dir.join("last"), 0),
        };
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io("write a part", &path))?;
        let written = write_stream(file, offset, body, &path, true).await?;
        if written != len {
            return Err(SpoolError::Body(format!(
                "part {part} announced {len} bytes and sent {written}"
            )));
        }
        {
            let mut index = self.index();
            let m = index
                .uploads
                .get_mut(id)
                .ok_or_else(|| SpoolError::Upload(format!("no multipart upload {id}")))?;
            if !last && m.chunk.is_none() {
                m.chunk = Some(len);
            }
            m.parts.insert(part, len);
        }
        let _saving = self.inner.saving.lock().await;
        // The latest state, which includes this part and every part recorded before it.
        let latest = self.index().uploads.get(id).cloned();
        let Some(m) = latest else {
            return Err(SpoolError::Upload(format!("no multipart upload {id}")));
        };
        let (spool, id) = (self.clone(), id.to_string());
        tokio::task::spawn_blocking(move || spool.save_upload(&id, &m))
            .await
            .map_err(|e| SpoolError::Upload(e.to_string()))?
    }

    /// Completes upload `id` once every part is there: the file becomes a committed entry.
    /// Returns its seq and size.
    pub async fn complete_upload(&self, id: &str) -> Result<(u64, u64), SpoolError> {
        let m = self
            .index()
            .uploads
            .get(id)
            .cloned()
            .ok_or_else(|| SpoolError::Upload(format!("no multipart upload {id}")))?;
        let missing: Vec<u64> = (1..=m.num_parts)
            .filter(|p| !m.parts.contains_key(p))
            .collect();
        if !missing.is_empty() {
            return Err(SpoolError::Upload(format!(
                "parts {missing:?} of upload {id} were never received"
            )));
        }
        let dir = self.upload_dir(id);
        let data = dir.join("data");
        let last_len = m.parts.get(&m.num_parts).copied().unwrap_or(0);
        let chunk = m.chunk.unwrap_or(last_len);
        if last_len > chunk {
            return Err(SpoolError::Upload(format!(
                "the last part ({last_len} bytes) is larger than the others ({chunk})"
            )));
        }
        let size = chunk * (m.num_parts - 1) + last_len;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&data)
            .map_err(io("complete", &data))?;
        let last = dir.join("last");
        if last.exists() {
            let bytes = std::fs::read(&last).map_err(io("complete", &last))?;
            file.write_all_at(&bytes, chunk * (m.num_parts - 1))
                .map_err(io("complete", &data))?;
        }
        file.set_len(size).map_err(io("complete", &data))?;
        drop(file);
        let seq = self.commit_file(data, m.target.clone(), size).await?;
        self.forget_upload(id);
        Ok((seq, size))
    }

    /// Drops upload `id` and its parts.
    pub fn forget_upload(&self, id: &str) {
        self.index().uploads.remove(id);
        let _ = std::fs::remove_dir_all(self.upload_dir(id));
        let _ = sync_dir(&self.inner.root.join("uploads"));
    }
}

impl Incoming {
    /// Writes the whole body. Returns the bytes written.
    pub async fn write_all<S, E>(&mut self, body: S) -> Result<u64, SpoolError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let Some(file) = self.file.take() else {
            return Err(SpoolError::Upload("the file was written already".into()));
        };
        let path = self.path.clone();
        let clone = file.try_clone().map_err(io("write", &path));
        self.file = Some(file);
        // Not fsynced here: [`Incoming::commit`] syncs it together with its description.
        let written = write_stream(clone?, 0, body, &path, false).await?;
        self.written = written;
        Ok(written)
    }

    /// Commits the received file as the latest content of `target`, durably; returns its seq.
    pub async fn commit(mut self, target: Target) -> Result<u64, SpoolError> {
        let size = self.written;
        let spool = self.spool.clone();
        let committed = spool.commit_file(self.path.clone(), target, size).await;
        if committed.is_ok() {
            // Renamed into the spool: nothing left to remove.
            self.file = None;
        }
        committed
    }
}

/// Writes `body` into `file` from `offset`, in large writes off the async threads, then fsyncs
/// it when `sync`. A write that fails (the disk full) leaves the caller to remove the file.
async fn write_stream<S, E>(
    file: std::fs::File,
    offset: u64,
    mut body: S,
    path: &Path,
    sync: bool,
) -> Result<u64, SpoolError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let mut file = Some(file);
    let mut buf: Vec<u8> = Vec::with_capacity(WRITE_BUFFER);
    let mut written = 0u64;
    let mut hinted = 0u64;
    let flush = |file: std::fs::File, data: Vec<u8>, at: u64, hint_from: Option<u64>| {
        tokio::task::spawn_blocking(move || {
            let result = file.write_all_at(&data, at);
            if let (Ok(()), Some(from)) = (&result, hint_from) {
                start_writeback(&file, from, at + data.len() as u64 - from);
            }
            (file, data, result)
        })
    };
    loop {
        let chunk = body.next().await;
        let end = match &chunk {
            None => true,
            Some(Ok(bytes)) => {
                buf.extend_from_slice(bytes);
                false
            }
            Some(Err(e)) => return Err(SpoolError::Body(e.to_string())),
        };
        if (end && !buf.is_empty()) || buf.len() >= WRITE_BUFFER {
            let at = offset + written;
            let len = buf.len() as u64;
            let hint = (written + len - hinted >= WRITEBACK_EVERY).then_some(offset + hinted);
            let Some(f) = file.take() else {
                return Err(SpoolError::Upload("no file to write".into()));
            };
            let (f, mut data, result) = flush(f, std::mem::take(&mut buf), at, hint)
                .await
                .map_err(|e| SpoolError::Upload(e.to_string()))?;
            if let Err(e) = result {
                // The client is still sending: it hears the answer only once it has sent all.
                drain(body).await;
                return Err(io("write", path)(e));
            }
            file = Some(f);
            written += len;
            if hint.is_some() {
                hinted = written;
            }
            data.clear();
            buf = data;
        }
        if end {
            break;
        }
    }
    let Some(f) = file.take() else {
        return Err(SpoolError::Upload("no file to sync".into()));
    };
    if !sync {
        return Ok(written);
    }
    tokio::task::spawn_blocking(move || f.sync_data())
        .await
        .map_err(|e| SpoolError::Upload(e.to_string()))?
        .map_err(io("sync", path))?;
    Ok(written)
}

/// Reads and drops the rest of a body, so that a client still sending hears the answer (an
/// HTTP/1.1 client that is cut off mid-body reports a broken connection instead).
pub async fn drain<S, E>(mut body: S)
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
{
    while let Some(Ok(_)) = body.next().await {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(path: &str) -> Target {
        Target {
            run: Some("r1".into()),
            index: "worker-0".into(),
            model: None,
            path: path.into(),
        }
    }

    fn body(parts: &[&'static [u8]]) -> impl Stream<Item = Result<Bytes, String>> + Unpin {
        futures::stream::iter(
            parts
                .iter()
                .map(|p| Ok(Bytes::from_static(p)))
                .collect::<Vec<_>>(),
        )
    }

    #[tokio::test]
    async fn a_committed_file_survives_a_restart_and_an_uncommitted_one_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let mut a = spool.receive().unwrap();
        assert_eq!(a.write_all(body(&[b"hello ", b"world"])).await.unwrap(), 11);
        let seq = a.commit(target("a.txt")).await.unwrap();
        let mut b = spool.receive().unwrap();
        b.write_all(body(&[b"half"])).await.unwrap();
        std::mem::forget(b); // killed before committing
                             // A second version of a.txt replaces the first.
        let mut c = spool.receive().unwrap();
        c.write_all(body(&[b"v2"])).await.unwrap();
        let seq2 = c.commit(target("a.txt")).await.unwrap();
        assert!(seq2 > seq);
        drop(spool);

        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(
            std::fs::read_dir(dir.path().join("incoming"))
                .unwrap()
                .count(),
            0
        );
        let (latest, path, size) = spool.latest("mlflow/r1/artifacts/a.txt").unwrap();
        assert_eq!((latest, size), (seq2, 2));
        assert_eq!(std::fs::read(path).unwrap(), b"v2");
        let ready = spool.ready(&Default::default());
        assert_eq!(ready.len(), 1, "the replaced version is dropped");
        spool.done(seq2);
        assert!(spool.is_empty());
        assert_eq!(
            std::fs::read_dir(dir.path().join("pending"))
                .unwrap()
                .count(),
            0
        );
    }

    #[tokio::test]
    async fn multipart_parts_land_at_their_offsets_in_any_order() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let id = spool.create_upload(target("big.bin"), 3).unwrap();
        spool.write_part(&id, 3, 2, body(&[b"ef"])).await.unwrap();
        assert!(
            spool.complete_upload(&id).await.is_err(),
            "parts are missing"
        );
        spool.write_part(&id, 2, 2, body(&[b"cd"])).await.unwrap();
        // The upload is found again after a restart.
        let spool = Spool::open(dir.path()).unwrap();
        spool.write_part(&id, 1, 2, body(&[b"ab"])).await.unwrap();
        let (seq, size) = spool.complete_upload(&id).await.unwrap();
        assert_eq!(size, 6);
        assert_eq!(std::fs::read(spool.data_path(seq)).unwrap(), b"abcdef");
        assert!(!dir.path().join("uploads").join(&id).exists());
        let e = spool
            .write_part(&id, 1, 2, body(&[b"ab"]))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("no multipart upload"), "{e}");
    }
}
