//! One local file to one object, and hashing a file that may still be written.
//!
//! A file is read once per try with its [`Stamp`] taken before and after; equal stamps (and as
//! many bytes read as the size said) mean the bytes read are one version of the file, so the
//! stored object and the sha256 put in the manifest agree. A file that changed is read again, at
//! most `attempts` times, then the push fails naming it. Files above `multipart_above` go up as
//! a multipart upload in `part_size` parts, at most `concurrency` parts in flight, so memory stays
//! bounded by `part_size × (concurrency + 1)` whatever the file's size; smaller files are one PUT.
//! Each part's own sha256 is taken beside the whole file's (on another thread, so the send rate
//! does not change) and goes into the manifest, so a load can check the file range by range.
//!
//! Where the store has a multipart interface whose ids outlive the process (S3, GCS, Azure), a
//! multipart upload is [`Resumable`]: its id and each stored part's id are journaled (through the
//! push state) as they are known, so a push killed mid-file continues the same upload and sends
//! only the parts the store does not hold. A part is reused only while the file's stamp is the one
//! the upload started with, and every part, reused or sent, is read again for the digest, so the
//! manifest's sha256 is always of the bytes the object is made of. An upload the store no longer
//! knows (expired, aborted) is started again from the first part. On the local filesystem a large
//! file is copied again from the start (a local copy, not a network transfer).
//! This module never decides keys or save numbers ([`super::push`] does).

use std::io::Read;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use super::manifest::Parts;
use super::state::Unfinished;
use super::walk::Stamp;
use super::ArtifactsError;
use crate::error::{Classify, ErrorClass};
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
    /// The parts' digests, for a file stored in parts.
    pub parts: Option<Parts>,
    pub stamp: Stamp,
    /// Parts (and their bytes) that an earlier, killed push had already stored and that were not
    /// sent again.
    pub reused_parts: u64,
    pub reused_bytes: u64,
}

/// Records what is known of an unfinished multipart upload (`None`: there is none any more).
/// Called before a part's id could be lost, so a killed push can continue the upload.
pub type Journal<'a> = dyn FnMut(Option<&Unfinished>) -> Result<(), ArtifactsError> + Send + 'a;

/// A multipart upload that can outlive the process: the store's multipart interface, what an
/// earlier push left for this file (if anything), and where progress is recorded.
pub struct Resumable<'a> {
    pub parts: Arc<dyn MultipartStore>,
    pub left: Option<Unfinished>,
    pub journal: &'a mut Journal<'a>,
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

/// The digests of `path` cut into `part_size`-byte parts, as a multipart upload of it lists them;
/// `None` when the file no longer has `stamp` (it changed since it was stored, so its parts are
/// not the stored object's) (blocking; run off the async threads).
pub fn part_digests(
    path: &FsPath,
    part_size: usize,
    stamp: &Stamp,
) -> Result<Option<Parts>, ArtifactsError> {
    let mut file = std::fs::File::open(path).map_err(read_error(path))?;
    let part_size = part_size.max(1);
    let mut digests = Vec::new();
    let mut buf = Vec::with_capacity(part_size);
    let mut read = 0u64;
    loop {
        buf.clear();
        let n = (&mut file)
            .take(part_size as u64)
            .read_to_end(&mut buf)
            .map_err(read_error(path))?;
        if n == 0 {
            break;
        }
        digests.push(hex::encode(Sha256::digest(&buf)));
        read += n as u64;
    }
    let after = Stamp::of(path).map_err(read_error(path))?;
    Ok((&after == stamp && read == stamp.size).then_some(Parts {
        size: part_size as u64,
        sha256: digests,
    }))
}

/// Uploads `path` to `key`, reading it again while it changes; a large file's multipart upload is
/// continued and journaled through `resumable` when the store allows it.
pub async fn upload(
    store: &Arc<dyn ObjectStore>,
    service: Service,
    path: &FsPath,
    key: &Path,
    opts: &UploadOptions,
    mut resumable: Option<Resumable<'_>>,
) -> Result<Stored, ArtifactsError> {
    for attempt in 1..=opts.attempts.max(1) {
        let before = Stamp::of(path).map_err(read_error(path))?;
        let sent = if before.size > opts.multipart_above {
            match resumable.as_mut() {
                Some(r) => upload_resumable(r, service, path, key, opts).await?,
                None => upload_parts(store, service, path, key, opts).await?,
            }
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
        parts: None,
        stamp: Stamp::of(path).map_err(read_error(path))?,
        reused_parts: 0,
        reused_bytes: 0,
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
    let mut digests = Vec::new();
    let mut size = 0u64;
    let mut changed = false;
    loop {
        let buf = read_part(&mut file, opts.part_size, path).await?;
        if buf.is_empty() {
            break;
        }
        size += buf.len() as u64;
        if size > before.size {
            changed = true;
            break;
        }
        let (h, digest, buf) = hash_part(hasher, buf).await?;
        hasher = h;
        digests.push(digest);
        writer
            .wait_for_capacity(opts.concurrency)
            .await
            .map_err(request_error)?;
        writer.put(buf);
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
        parts: Some(Parts {
            size: opts.part_size as u64,
            sha256: digests,
        }),
        stamp: after,
        reused_parts: 0,
        reused_bytes: 0,
    }))
}

/// Adds a part to the file's digest and takes the part's own hex digest, off the async threads
/// and on two threads at once (hashing 8 MiB takes tens of milliseconds, and the file's digest
/// must go part after part while the parts' digests need not).
async fn hash_part(
    mut hasher: Sha256,
    buf: Vec<u8>,
) -> Result<(Sha256, String, bytes::Bytes), ArtifactsError> {
    let buf = bytes::Bytes::from(buf);
    let (for_file, for_part) = (buf.clone(), buf.clone());
    let file = tokio::task::spawn_blocking(move || {
        hasher.update(&for_file);
        hasher
    });
    let part = tokio::task::spawn_blocking(move || hex::encode(Sha256::digest(&for_part)));
    let (hasher, digest) =
        tokio::try_join!(file, part).map_err(|e| ArtifactsError::Task(e.to_string()))?;
    Ok((hasher, digest, buf))
}

/// Reads up to `want` bytes (fewer only at the end of the file).
async fn read_part(
    file: &mut tokio::fs::File,
    want: usize,
    path: &FsPath,
) -> Result<Vec<u8>, ArtifactsError> {
    let mut buf = Vec::with_capacity(want);
    while buf.len() < want {
        let n = file
            .take((want - buf.len()) as u64)
            .read_buf(&mut buf)
            .await
            .map_err(read_error(path))?;
        if n == 0 {
            break;
        }
    }
    Ok(buf)
}

/// Records the id of a part the store acknowledged (journaled at once: a kill after this must
/// not send the part again).
fn landed(
    journal: &mut Journal<'_>,
    record: &mut Unfinished,
    (i, result): (usize, object_store::Result<PartId>),
    request_error: &dyn Fn(object_store::Error) -> StorageError,
) -> Result<(), ArtifactsError> {
    let PartId { content_id } = result.map_err(request_error)?;
    record.parts.insert(i, content_id);
    journal(Some(record))
}

/// [`upload_resumable_once`], started over from the first part when the store no longer knows
/// the upload an earlier push left (it expired, or was aborted).
async fn upload_resumable(
    r: &mut Resumable<'_>,
    service: Service,
    path: &FsPath,
    key: &Path,
    opts: &UploadOptions,
) -> Result<Option<Stored>, ArtifactsError> {
    let left = r.left.take();
    let continuing = left.is_some();
    match upload_resumable_once(r, left, service, path, key, opts).await {
        Err(ArtifactsError::Storage(e)) if continuing && e.class() == ErrorClass::NotFound => {
            tracing::info!(key = %key, "the store no longer knows the interrupted upload; starting it again");
            (r.journal)(None)?;
            upload_resumable_once(r, None, service, path, key, opts).await
        }
        other => other,
    }
}

/// A multipart upload whose id and part ids are journaled, continuing `left` when it is an upload
/// of this key with the file's current stamp and part size. `None` when the file changed before
/// the upload was completed (the upload is aborted and forgotten).
async fn upload_resumable_once(
    r: &mut Resumable<'_>,
    left: Option<Unfinished>,
    service: Service,
    path: &FsPath,
    key: &Path,
    opts: &UploadOptions,
) -> Result<Option<Stored>, ArtifactsError> {
    let request_error =
        |e: object_store::Error| StorageError::request(service, key.to_string(), &e);
    let before = Stamp::of(path).map_err(read_error(path))?;
    let part_size = opts.part_size.max(1);
    let usable = left
        .filter(|u| u.key == key.as_ref() && u.stamp == before && u.part_size == part_size as u64);
    let mut record = match usable {
        Some(u) => {
            tracing::info!(key = %key, parts = u.parts.len(), "continuing the multipart upload an interrupted push left");
            u
        }
        None => {
            let upload_id = r.parts.create_multipart(key).await.map_err(request_error)?;
            let u = Unfinished {
                key: key.to_string(),
                upload_id,
                stamp: before,
                part_size: part_size as u64,
                parts: Default::default(),
            };
            (r.journal)(Some(&u))?;
            u
        }
    };
    let count = before.size.div_ceil(part_size as u64).max(1) as usize;
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(read_error(path))?;
    let mut hasher = Sha256::new();
    let mut digests = Vec::with_capacity(count);
    let (mut reused_parts, mut reused_bytes) = (0u64, 0u64);
    let mut in_flight = futures::stream::FuturesUnordered::new();
    let mut changed = false;
    let upload_id = record.upload_id.clone();
    let put = |idx: usize, data: bytes::Bytes| {
        let (parts, id) = (r.parts.clone(), upload_id.clone());
        async move {
            let result: object_store::Result<PartId> =
                parts.put_part(key, &id, idx, PutPayload::from(data)).await;
            (idx, result)
        }
    };
    for idx in 0..count {
        let want = (before.size - (idx * part_size) as u64).min(part_size as u64) as usize;
        let buf = read_part(&mut file, want, path).await?;
        if buf.len() != want {
            changed = true; // shrank under the read
            break;
        }
        let (h, digest, buf) = hash_part(hasher, buf).await?;
        hasher = h;
        digests.push(digest);
        if record.parts.contains_key(&idx) {
            reused_parts += 1;
            reused_bytes += buf.len() as u64;
            continue;
        }
        while in_flight.len() >= opts.concurrency.max(1) {
            if let Some(done) = in_flight.next().await {
                landed(r.journal, &mut record, done, &request_error)?;
            }
        }
        in_flight.push(put(idx, buf));
    }
    while let Some(done) = in_flight.next().await {
        landed(r.journal, &mut record, done, &request_error)?;
    }
    drop(in_flight);
    // One byte more than the stamp said means the file grew during the read.
    if !changed {
        changed = !read_part(&mut file, 1, path).await?.is_empty();
    }
    let after = Stamp::of(path).map_err(read_error(path))?;
    if changed || before != after {
        if let Err(e) = r.parts.abort_multipart(key, &record.upload_id).await {
            tracing::warn!(key = %key, error = %e, "cannot abort a multipart upload; the store's lifecycle rules remove it");
        }
        (r.journal)(None)?;
        return Ok(None);
    }
    // Every index below `count` was either found in the record or sent and recorded above.
    let ids = (0..count)
        .map(|i| {
            record
                .parts
                .get(&i)
                .map(|id| PartId {
                    content_id: id.clone(),
                })
                .ok_or_else(|| ArtifactsError::Task(format!("part {i} of `{key}` has no id")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    r.parts
        .complete_multipart(key, &record.upload_id, ids)
        .await
        .map_err(request_error)?;
    (r.journal)(None)?;
    Ok(Some(Stored {
        sha256: hex::encode(hasher.finalize()),
        size: before.size,
        parts: Some(Parts {
            size: part_size as u64,
            sha256: digests,
        }),
        stamp: after,
        reused_parts,
        reused_bytes,
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
            let stored = upload(&store, Service::Local, &path, &key, &opts(), None)
                .await
                .unwrap();
            assert_eq!(stored.size, len as u64);
            assert_eq!(stored.sha256, hex::encode(Sha256::digest(&body)));
            let listed = (len > 5 << 20).then(|| expected_parts(&body, 5 << 20));
            assert_eq!(stored.parts, listed, "{name}");
            let got = store.get(&key).await.unwrap().bytes().await.unwrap();
            assert_eq!(got.as_ref(), body.as_slice(), "{name}");
            // Reading the local file gives the same parts, while it keeps the stamp it was
            // stored with.
            let local = part_digests(&path, 5 << 20, &stored.stamp).unwrap();
            assert_eq!(local, Some(expected_parts(&body, 5 << 20)), "{name}");
        }
        let path = dir.path().join("large");
        let stamp = Stamp::of(&path).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&path, b"rewritten").unwrap();
        assert_eq!(part_digests(&path, 5 << 20, &stamp).unwrap(), None);
    }

    /// The digests a manifest should list for `body` cut into `size`-byte parts.
    fn expected_parts(body: &[u8], size: usize) -> Parts {
        Parts {
            size: size as u64,
            sha256: body
                .chunks(size)
                .map(|c| hex::encode(Sha256::digest(c)))
                .collect(),
        }
    }

    /// An in-memory store with multipart uploads and a journal that keeps the last record.
    struct Resuming {
        store: Arc<dyn ObjectStore>,
        parts: Arc<dyn MultipartStore>,
        kept: Arc<std::sync::Mutex<Option<Unfinished>>>,
    }

    impl Resuming {
        fn new() -> Resuming {
            let memory = Arc::new(InMemory::new());
            Resuming {
                store: memory.clone(),
                parts: memory,
                kept: Arc::new(std::sync::Mutex::new(None)),
            }
        }

        /// Uploads with a resumable multipart upload that continues `left`; the journal fails
        /// (as a kill would end the push) once `stop_after` parts are recorded.
        async fn upload(
            &self,
            path: &FsPath,
            key: &Path,
            opts: &UploadOptions,
            left: Option<Unfinished>,
            stop_after: usize,
        ) -> Result<Stored, ArtifactsError> {
            let kept = self.kept.clone();
            let mut journal = move |u: Option<&Unfinished>| {
                *kept.lock().unwrap() = u.cloned();
                if u.is_some_and(|u| u.parts.len() >= stop_after) {
                    return Err(ArtifactsError::Task("killed".into()));
                }
                Ok(())
            };
            let resumable = Resumable {
                parts: self.parts.clone(),
                left,
                journal: &mut journal,
            };
            upload(
                &self.store,
                Service::Local,
                path,
                key,
                opts,
                Some(resumable),
            )
            .await
        }

        fn left(&self) -> Option<Unfinished> {
            self.kept.lock().unwrap().clone()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_interrupted_multipart_upload_continues_without_sending_stored_parts() {
        let dir = tempfile::tempdir().unwrap();
        let len = (23 << 20) + 11; // five parts of 5 MiB, the last one short
        let body: Vec<u8> = (0..len).map(|i| (i * 7 % 253) as u8).collect();
        let path = dir.path().join("big.bin");
        std::fs::write(&path, &body).unwrap();
        let r = Resuming::new();
        let key = Path::from("save/big.bin");
        let opts = UploadOptions {
            concurrency: 1,
            ..opts()
        };
        let first = r.upload(&path, &key, &opts, None, 2).await;
        assert!(first.is_err(), "the first push was cut off");
        assert!(
            r.store.head(&key).await.is_err(),
            "no object before completion"
        );
        let left = r.left().expect("the upload was journaled");
        assert_eq!(left.parts.len(), 2);

        let stored = r
            .upload(&path, &key, &opts, Some(left), usize::MAX)
            .await
            .unwrap();
        assert_eq!((stored.reused_parts, stored.reused_bytes), (2, 10 << 20));
        assert_eq!(stored.sha256, hex::encode(Sha256::digest(&body)));
        // Reused parts are read again, so their digests are listed like those of sent parts.
        assert_eq!(stored.parts, Some(expected_parts(&body, 5 << 20)));
        assert!(r.left().is_none(), "a completed upload is forgotten");
        let got = r.store.get(&key).await.unwrap().bytes().await.unwrap();
        assert_eq!(got.as_ref(), body.as_slice());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_upload_left_for_other_content_is_not_continued() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.bin");
        std::fs::write(&path, vec![1u8; 12 << 20]).unwrap();
        let r = Resuming::new();
        let key = Path::from("big.bin");
        assert!(r.upload(&path, &key, &opts(), None, 1).await.is_err());
        let left = r.left().unwrap();
        // The file is rewritten with other bytes (a new stamp): its stored part must not be used.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let body = vec![2u8; 12 << 20];
        std::fs::write(&path, &body).unwrap();
        let stored = r
            .upload(&path, &key, &opts(), Some(left), usize::MAX)
            .await
            .unwrap();
        assert_eq!(stored.reused_parts, 0);
        let got = r.store.get(&key).await.unwrap().bytes().await.unwrap();
        assert_eq!(got.as_ref(), body.as_slice());
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
        let result = upload(&store, Service::Local, &path, &key, &opts(), None).await;
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
