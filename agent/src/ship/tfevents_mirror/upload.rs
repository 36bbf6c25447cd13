//! Sending one byte range of a local file to one object, with bounded memory.
//!
//! A range of at most [`PART_BYTES`] goes up in one request; a longer one as a multipart upload
//! read from the file a part at a time, with at most [`PARTS_IN_FLIGHT`] parts in memory, so a
//! segment of any size costs the same memory and is never over the 5 GB limit of one S3 request.
//! Either way the object appears whole or not at all.
//!
//! On a local folder (`file://`) object_store writes an object beside its final name first
//! (`<name>#<n>`), where TensorBoard would read it as an event file and where a `kill -9` would
//! leave it for good. There the object is written under a staging key whose name marks no event
//! file and then renamed into place.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};

/// The largest range sent in one request, and the size of each part of a longer one (S3 takes
/// parts of 5 MiB or more).
pub const PART_BYTES: u64 = 5 << 20;
/// How many parts of one upload may be in flight (and in memory) at once.
pub const PARTS_IN_FLIGHT: usize = 2;

/// Why a range was not stored.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("cannot read `{}`: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Store(#[from] object_store::Error),
}

/// Uploads file ranges to one store. Invariant: `staging` is set exactly for a local folder.
pub struct Uploader {
    store: Arc<dyn ObjectStore>,
    staging: Option<Path>,
}

impl Uploader {
    /// An uploader for `store`; `staging_key` is used only when the store is a local folder.
    pub fn new(store: Arc<dyn ObjectStore>, staging_key: Path) -> Uploader {
        let staging = is_local_folder(store.as_ref()).then_some(staging_key);
        Uploader { store, staging }
    }

    /// Stores the bytes `[start, end)` of `file` as the object `key`, replacing it.
    pub async fn upload(
        &self,
        file: &FsPath,
        start: u64,
        end: u64,
        key: &Path,
    ) -> Result<(), UploadError> {
        let read_err = |source| UploadError::Read {
            path: file.to_path_buf(),
            source,
        };
        let source = Arc::new(File::open(file).map_err(read_err)?);
        let target = self.staging.as_ref().unwrap_or(key);
        if end - start <= PART_BYTES {
            let bytes = read_range(&source, start, end - start)
                .await
                .map_err(read_err)?;
            self.store.put(target, PutPayload::from(bytes)).await?;
        } else {
            let upload = self.store.put_multipart(target).await?;
            let mut parts = WriteMultipart::new_with_chunk_size(upload, PART_BYTES as usize);
            let mut at = start;
            while at < end {
                let len = PART_BYTES.min(end - at);
                let sent = match parts.wait_for_capacity(PARTS_IN_FLIGHT).await {
                    Ok(()) => read_range(&source, at, len).await.map_err(read_err),
                    Err(e) => Err(e.into()),
                };
                match sent {
                    Ok(bytes) => parts.put(bytes),
                    Err(e) => {
                        // The upload is dropped either way; aborting frees its parts sooner.
                        let _ = parts.abort().await;
                        return Err(e);
                    }
                }
                at += len;
            }
            parts.finish().await?;
        }
        if let Some(staging) = &self.staging {
            self.store.rename(staging, key).await?;
        }
        Ok(())
    }

    /// Deletes every object in `keys` (a missing one is not an error).
    pub async fn delete(&self, keys: &[Path]) -> Result<(), UploadError> {
        for key in keys {
            match self.store.delete(key).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// The keys directly under `folder`.
    pub async fn list(&self, folder: &Path) -> Result<Vec<Path>, UploadError> {
        let listed = self.store.list_with_delimiter(Some(folder)).await?;
        Ok(listed.objects.into_iter().map(|o| o.location).collect())
    }
}

/// Reads exactly `len` bytes at `offset`, off the async threads (a short file is an error).
///
/// The buffer is allocated here, on the async side, and only filled on the blocking thread: a
/// part allocated on one of the many short-lived blocking threads and freed elsewhere stayed
/// with that thread's allocator, and the sidecar kept tens of MiB it no longer used.
async fn read_range(file: &Arc<File>, offset: u64, len: u64) -> io::Result<Bytes> {
    let mut buf = vec![0u8; len as usize];
    let file = file.clone();
    let buf = tokio::task::spawn_blocking(move || {
        file.read_exact_at(&mut buf, offset)?;
        Ok::<_, io::Error>(buf)
    })
    .await
    .map_err(io::Error::other)??;
    Ok(Bytes::from(buf))
}

/// Whether `store` is object_store's local folder store. It has no other mark than its name.
fn is_local_folder(store: &dyn ObjectStore) -> bool {
    store.to_string().starts_with("LocalFileSystem(")
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::local::LocalFileSystem;
    use object_store::memory::InMemory;

    #[test]
    fn the_local_folder_store_is_recognised() {
        assert!(is_local_folder(&LocalFileSystem::new()));
        assert!(!is_local_folder(&InMemory::new()));
    }

    #[tokio::test]
    async fn ranges_small_and_large_are_stored_exactly_and_staging_leaves_no_trace() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("events.out.tfevents.1");
        let data: Vec<u8> = (0..(2 * PART_BYTES + 123))
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(&file, &data).unwrap();
        let store_dir = dir.path().join("store");
        std::fs::create_dir(&store_dir).unwrap();
        let store: Arc<dyn ObjectStore> =
            Arc::new(LocalFileSystem::new_with_prefix(&store_dir).unwrap());
        let up = Uploader::new(store.clone(), Path::from("t/.periscope-upload"));
        let small = Path::from("t/run/events.out.tfevents.1");
        let large = Path::from("t/run/events.out.tfevents.1.00000000000000000100");
        up.upload(&file, 0, 100, &small).await.unwrap();
        up.upload(&file, 100, data.len() as u64, &large)
            .await
            .unwrap();
        let get = |p: Path| {
            let store = store.clone();
            async move { store.get(&p).await.unwrap().bytes().await.unwrap() }
        };
        assert_eq!(get(small).await, &data[..100]);
        assert_eq!(get(large).await, &data[100..]);
        let mut names: Vec<String> = walkdir(&store_dir);
        names.sort();
        assert_eq!(
            names,
            [
                "t/run/events.out.tfevents.1",
                "t/run/events.out.tfevents.1.00000000000000000100"
            ]
        );
        let short = up
            .upload(&file, 0, data.len() as u64 + 1, &Path::from("t/x"))
            .await;
        assert!(matches!(short, Err(UploadError::Read { .. })), "{short:?}");
    }

    fn walkdir(root: &FsPath) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(d).unwrap().flatten() {
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                } else {
                    let rel = e.path().strip_prefix(root).unwrap().to_owned();
                    out.push(rel.to_string_lossy().into_owned());
                }
            }
        }
        out
    }
}
