//! One local file to one object, and hashing a file that may still be written.
//!
//! A file is read once per try with its [`Stamp`] taken before and after; equal stamps (and as
//! many bytes read as the size said) mean the bytes read are one version of the file, so the
//! stored object and the sha256 put in the manifest agree. A file that changed is read again, at
//! most `attempts` times, then the push fails naming it. Files above `multipart_above` go up as
//! a multipart upload in `part_size` parts, at most `concurrency` parts in flight, so memory stays
//! bounded by `part_size × (concurrency + 1)` whatever the file's size; smaller files are one PUT.
//! This module never decides keys or save numbers ([`super::push`] does).

use std::io::Read;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use super::walk::Stamp;
use super::ArtifactsError;
use crate::storage::{Service, StorageError};

/// How files go up. Invariant: every number is at least 1.
#[derive(Debug, Clone, Copy)]
pub struct UploadOptions {
    /// Files larger than this use a multipart upload.
    pub multipart_above: u64,
    pub part_size: usize,
    /// Parts of one multipart upload in flight at once.
    pub concurrency: usize,
    /// Reads of a changing file before giving up.
    pub attempts: u32,
}

/// What was stored: the digest and size of exactly the bytes uploaded, and the file's stamp then.
#[derive(Debug, Clone)]
pub struct Stored {
    pub sha256: String,
    pub size: u64,
    pub stamp: Stamp,
}

fn read_error(path: &FsPath) -> impl Fn(std::io::Error) -> ArtifactsError + '_ {
    move |error| ArtifactsError::Read {
        path: path.to_path_buf(),
        error,
    }
}

/// Hashes a file, again while it changes under the read (blocking; run off the async threads).
pub fn hash_stable(path: &FsPath, attempts: u32) -> Result<(String, Stamp), ArtifactsError> {
    for attempt in 1..=attempts.max(1) {
        let before = Stamp::of(path).map_err(read_error(path))?;
        let mut file = std::fs::File::open(path).map_err(read_error(path))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut read = 0u64;
        loop {
            let n = file.read(&mut buf).map_err(read_error(path))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            read += n as u64;
        }
        let after = Stamp::of(path).map_err(read_error(path))?;
        if before == after && read == after.size {
            return Ok((hex::encode(hasher.finalize()), after));
        }
        tracing::info!(file = %path.display(), attempt, "file changed while it was hashed; reading it again");
    }
    Err(ArtifactsError::FileChanging {
        path: path.to_path_buf(),
        attempts: attempts.max(1),
    })
}

/// Uploads `path` to `key`, reading it again while it changes.
pub async fn upload(
    store: &Arc<dyn ObjectStore>,
    service: Service,
    path: &FsPath,
    key: &Path,
    opts: &UploadOptions,
) -> Result<Stored, ArtifactsError> {
    for attempt in 1..=opts.attempts.max(1) {
        let before = Stamp::of(path).map_err(read_error(path))?;
        let sent = if before.size > opts.multipart_above {
            upload_parts(store, service, path, key, opts).await?
        } else {
            upload_whole(store, service, path, key).await?
        };
        if let Some(stored) = sent {
            let after = Stamp::of(path).map_err(read_error(path))?;
            if before == after && stored.size == after.size {
                return Ok(Stored {
                    stamp: after,
                    ..stored
                });
            }
        }
        tracing::info!(file = %path.display(), attempt, "file changed while it was uploaded; sending it again");
    }
    Err(ArtifactsError::FileChanging {
        path: path.to_path_buf(),
        attempts: opts.attempts.max(1),
    })
}

/// One PUT of the whole file (small files: the buffer is at most `multipart_above` bytes).
async fn upload_whole(
    store: &Arc<dyn ObjectStore>,
    service: Service,
    path: &FsPath,
    key: &Path,
) -> Result<Option<Stored>, ArtifactsError> {
    let bytes = tokio::fs::read(path).await.map_err(read_error(path))?;
    let bytes = bytes::Bytes::from(bytes);
    let hashed = bytes.clone();
    let sha256 = tokio::task::spawn_blocking(move || hex::encode(Sha256::digest(&hashed)))
        .await
        .map_err(|e| ArtifactsError::Task(e.to_string()))?;
    let size = bytes.len() as u64;
    store
        .put(key, PutPayload::from(bytes))
        .await
        .map_err(|e| StorageError::request(service, key.to_string(), &e))?;
    Ok(Some(Stored {
        sha256,
        size,
        stamp: Stamp::of(path).map_err(read_error(path))?,
    }))
}

/// A multipart upload in parts; `None` when the file changed before the upload was completed
/// (the upload is aborted, so no object was made from mixed versions).
async fn upload_parts(
    store: &Arc<dyn ObjectStore>,
    service: Service,
    path: &FsPath,
    key: &Path,
    opts: &UploadOptions,
) -> Result<Option<Stored>, ArtifactsError> {
    let request_error =
        |e: object_store::Error| StorageError::request(service, key.to_string(), &e);
    let before = Stamp::of(path).map_err(read_error(path))?;
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(read_error(path))?;
    let upload = store.put_multipart(key).await.map_err(request_error)?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, opts.part_size);
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut changed = false;
    loop {
        let mut buf = Vec::with_capacity(opts.part_size);
        while buf.len() < opts.part_size {
            let n = (&mut file)
                .take((opts.part_size - buf.len()) as u64)
                .read_buf(&mut buf)
                .await
                .map_err(read_error(path))?;
            if n == 0 {
                break;
            }
        }
        if buf.is_empty() {
            break;
        }
        size += buf.len() as u64;
        if size > before.size {
            changed = true;
            break;
        }
        // Hashing 8 MiB takes tens of milliseconds: off the async threads.
        let (h, buf) = tokio::task::spawn_blocking(move || {
            hasher.update(&buf);
            (hasher, buf)
        })
        .await
        .map_err(|e| ArtifactsError::Task(e.to_string()))?;
        hasher = h;
        writer
            .wait_for_capacity(opts.concurrency)
            .await
            .map_err(request_error)?;
        writer.put(bytes::Bytes::from(buf));
    }
    let after = Stamp::of(path).map_err(read_error(path))?;
    if changed || before != after || size != after.size {
        if let Err(e) = writer.abort().await {
            tracing::warn!(key = %key, error = %e, "cannot abort a multipart upload; the store's lifecycle rules remove it");
        }
        return Ok(None);
    }
    writer.finish().await.map_err(request_error)?;
    Ok(Some(Stored {
        sha256: hex::encode(hasher.finalize()),
        size,
        stamp: after,
    }))
}

/// The file a relative path names below `root`.
pub fn local_path(root: &FsPath, rel: &str) -> PathBuf {
    rel.split('/')
        .fold(root.to_path_buf(), |p, part| p.join(part))
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    fn opts() -> UploadOptions {
        UploadOptions {
            multipart_above: 5 << 20,
            part_size: 5 << 20,
            concurrency: 2,
            attempts: 3,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn small_and_multipart_uploads_store_exactly_the_bytes_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        for (name, len) in [("small", 1000usize), ("large", (12 << 20) + 7)] {
            let body: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let path = dir.path().join(name);
            std::fs::write(&path, &body).unwrap();
            let key = Path::from(name);
            let stored = upload(&store, Service::Local, &path, &key, &opts())
                .await
                .unwrap();
            assert_eq!(stored.size, len as u64);
            assert_eq!(stored.sha256, hex::encode(Sha256::digest(&body)));
            let got = store.get(&key).await.unwrap().bytes().await.unwrap();
            assert_eq!(got.as_ref(), body.as_slice(), "{name}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_appended_to_during_every_upload_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("growing.bin");
        std::fs::write(&path, vec![7u8; 12 << 20]).unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (stop, path) = (stop.clone(), path.clone());
            std::thread::spawn(move || {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    f.write_all(b"x").unwrap();
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            })
        };
        // The writer is running once the file has grown.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::metadata(&path).unwrap().len() <= 12 << 20 {
            assert!(
                std::time::Instant::now() < deadline,
                "the writer never wrote"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let key = Path::from("growing.bin");
        let result = upload(&store, Service::Local, &path, &key, &opts()).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        writer.join().unwrap();
        match result {
            Err(ArtifactsError::FileChanging { path: p, attempts }) => {
                assert_eq!((p, attempts), (path, 3));
            }
            other => panic!("expected FileChanging, got {other:?}"),
        }
        // Every multipart try was aborted: no object made of mixed versions exists.
        assert!(store.head(&key).await.is_err());
    }
}
