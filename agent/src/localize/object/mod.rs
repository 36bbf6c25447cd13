//! Object store sources: `s3://`, `gs://`, `az://` and `file://` (or a local path).
//!
//! On the local filesystem a folder (with or without a trailing `/`) is not listed as a store
//! would list it: it is walked and copied through the archive guard ([`unpack::folder`]), so a
//! symlink in it is recreated only when it stays inside, never read through.
//!
//! A URL whose path ends in `/` (or names a whole bucket) is a prefix: every object under it is
//! copied, keys becoming paths below the stage ([`keys`]), many at once and large ones in ranges
//! ([`crate::storage::download`]). Any other URL names one object: an archive (by
//! extension or `#format=`) is streamed into the unpacker ([`archive`]); anything else is stored
//! as is under its own name.
//!
//! The revision recorded for a prefix or a plain object is a digest of keys and ETags
//! ([`fingerprint`]), which `probe` recomputes from a listing alone; an archive's revision is the
//! sha256 of its bytes. Stores are built only by [`crate::storage`]. This module writes only into
//! the stage it is given and never prints.

mod archive;
mod fingerprint;
mod keys;

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};

use super::unpack::{self, UnpackError, UnpackOptions};
use super::{
    publish, ArchiveFormat, FetchContext, Fetched, Filter, Revision, RevisionKind, SourceError,
    SourceOptions, SourceProgress,
};
use crate::artifacts::{self, Manifest, MANIFEST_FILE};
use crate::error::{Classify, ErrorClass};
use crate::redact::redact_url;
use crate::storage::download::{self, DownloadError};
use crate::storage::{self, Service, StorageError, StoreOptions};

pub use fingerprint::fingerprint;

/// An object store source that failed.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    /// Building the store or a request failed; classified by [`storage::classify`].
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A key that could land outside the stage or collide: the whole source is refused.
    #[error("refusing the source: object key `{key}` is unsafe: {reason}")]
    UnsafeKey { key: String, reason: String },
    /// The source is larger than `--max-bytes` / `--max-files` allow.
    #[error("refusing the source: {what} is {actual}, over the limit of {limit}")]
    OverLimit {
        what: &'static str,
        actual: u64,
        limit: u64,
    },
    /// A prefix with nothing under it: most likely a typo.
    #[error("no objects under `{shown}`")]
    EmptyPrefix { shown: String },
    /// Downloading an object failed.
    #[error(transparent)]
    Download(#[from] DownloadError),
    /// A save of model artifacts that fails its manifest (or cannot be read).
    #[error(transparent)]
    Artifacts(#[from] crate::artifacts::ArtifactsError),
    /// Writing into the stage failed.
    #[error("cannot write `{}`: {error}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        error: std::io::Error,
    },
    /// A local path that does not exist.
    #[error("no such {} `{}`", if *folder { "folder" } else { "file or folder" }, path.display())]
    NoSuchPath { path: PathBuf, folder: bool },
    /// A local path written as a folder (with a trailing `/`) that is a file.
    #[error("`{}` is a file, not a folder", path.display())]
    NotAFolder { path: PathBuf },
    /// A local path that cannot be inspected (permissions, say).
    #[error("cannot read `{}`: {error}", path.display())]
    Inspect {
        path: PathBuf,
        #[source]
        error: std::io::Error,
    },
}

/// Maps an IO error on a stage file.
fn write_error(path: &FsPath) -> impl Fn(std::io::Error) -> ObjectError + '_ {
    move |error| ObjectError::Write {
        path: path.to_path_buf(),
        error,
    }
}

impl Classify for ObjectError {
    fn class(&self) -> ErrorClass {
        match self {
            ObjectError::Storage(e) => e.class(),
            ObjectError::UnsafeKey { .. } | ObjectError::OverLimit { .. } => ErrorClass::Integrity,
            ObjectError::EmptyPrefix { .. } => ErrorClass::NotFound,
            ObjectError::Download(e) => e.class(),
            ObjectError::Artifacts(e) => e.class(),
            ObjectError::Write { .. } | ObjectError::Inspect { .. } => ErrorClass::Io,
            ObjectError::NoSuchPath { .. } => ErrorClass::NotFound,
            ObjectError::NotAFolder { .. } => ErrorClass::Usage,
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            ObjectError::Storage(e) => e.hint(),
            ObjectError::UnsafeKey { .. } => Some(
                "someone who can write to this bucket stored a key that is not a safe relative path; \
                 remove or rename it"
                    .into(),
            ),
            ObjectError::OverLimit { .. } => {
                Some("raise --max-bytes / --max-files if this size is expected".into())
            }
            ObjectError::EmptyPrefix { .. } => Some(
                "check the bucket and prefix; to fetch a single object, drop the trailing `/`"
                    .into(),
            ),
            ObjectError::Download(e) => e.hint(),
            ObjectError::Artifacts(e) => e.hint(),
            ObjectError::Write { .. } => {
                Some("check that the destination is writable and has free space".into())
            }
            ObjectError::NoSuchPath { .. } => Some(
                "check the path (a relative path is taken from the working folder); URLs need a \
                 scheme such as https://, git+https:// or s3://"
                    .into(),
            ),
            ObjectError::NotAFolder { .. } => {
                Some("drop the trailing `/` to copy the file (an archive is unpacked)".into())
            }
            ObjectError::Inspect { .. } => Some("check the file permissions".into()),
        }
    }
}

/// What a source URL names inside its store.
struct Located {
    store: Arc<dyn ObjectStore>,
    service: Service,
    path: Path,
    /// The URL as people may see it.
    shown: String,
    /// True when every object under `path` is copied.
    is_prefix: bool,
}

fn locate(url: &url::Url, ctx: &FetchContext) -> Result<Located, ObjectError> {
    let shown = redact_url(url.as_str());
    let service = Service::from_scheme(url.scheme()).ok_or_else(|| StorageError::BadUrl {
        shown: shown.clone(),
        reason: "not an object store scheme".into(),
    })?;
    let options = StoreOptions {
        retry: ctx.retry,
        connect_timeout: ctx.connect_timeout,
        idle_timeout: ctx.idle_timeout,
        ca_file: ctx.tls.ca_file.clone(),
    };
    let (store, path) = storage::open(url, &options)?;
    let is_prefix = url.path().ends_with('/') || path.as_ref().is_empty();
    Ok(Located {
        store,
        service,
        path,
        shown,
        is_prefix,
    })
}

impl Located {
    async fn list(&self) -> Result<Vec<ObjectMeta>, ObjectError> {
        let objects: Vec<ObjectMeta> = self
            .store
            .list(Some(&self.path))
            .try_collect()
            .await
            .map_err(|e| StorageError::request(self.service, self.shown.clone(), &e))?;
        if objects.is_empty() {
            return Err(ObjectError::EmptyPrefix {
                shown: self.shown.clone(),
            });
        }
        Ok(objects)
    }

    /// `…/artifacts/latest/` names the latest complete save of model artifacts: the highest
    /// `…/artifacts/<n>/` with a manifest. Any other location is returned as it is.
    async fn resolve_latest(mut self) -> Result<Located, ObjectError> {
        let base = match self.path.filename() {
            Some("latest") if self.is_prefix => {
                let parts: Vec<_> = self.path.parts().collect();
                let parent: Path = parts[..parts.len() - 1].iter().cloned().collect();
                if parent.filename() != Some(artifacts::ARTIFACTS_DIR) {
                    return Ok(self);
                }
                parent
            }
            _ => return Ok(self),
        };
        let saves = artifacts::saves::list(&self.store, self.service, &base).await?;
        let Some((n, _, _)) = saves.latest else {
            return Err(ObjectError::EmptyPrefix {
                shown: format!("{} (no complete save)", self.shown),
            });
        };
        tracing::info!(source = %self.shown, save = n, "latest complete artifacts save");
        self.path = base.join(n.to_string());
        Ok(self)
    }

    /// Downloads `files` with the source's concurrency; returns the bytes written.
    async fn download(
        &self,
        files: &[download::Download],
        ctx: &FetchContext,
        progress: &SourceProgress,
    ) -> Result<download::Downloaded, ObjectError> {
        let progress = |bytes| progress.advance(bytes);
        Ok(download::download_all(
            self.store.clone(),
            self.service,
            files,
            ctx.concurrency,
            &progress,
        )
        .await?)
    }

    /// On the local filesystem, what the location is on disk: `Some(folder)` for a folder (copied
    /// through the archive guard, or loaded as a save), `None` for a file. Always `None` for
    /// other stores. A missing path is an error that names it.
    fn local_folder(&self) -> Result<Option<PathBuf>, ObjectError> {
        if self.service != Service::Local {
            return Ok(None);
        }
        // The local store's paths are relative to the filesystem root.
        let path = FsPath::new("/").join(self.path.as_ref());
        match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() => Ok(Some(path)),
            Ok(_) if self.is_prefix => Err(ObjectError::NotAFolder { path }),
            Ok(_) => Ok(None),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                Err(ObjectError::NoSuchPath {
                    path,
                    folder: self.is_prefix,
                })
            }
            Err(error) => Err(ObjectError::Inspect { path, error }),
        }
    }

    async fn head(&self) -> Result<ObjectMeta, ObjectError> {
        Ok(self
            .store
            .head(&self.path)
            .await
            .map_err(|e| StorageError::request(self.service, self.shown.clone(), &e))?)
    }
}

/// The archive format a single object is unpacked with, if any.
fn archive_format(path: &Path, opts: &SourceOptions) -> Option<ArchiveFormat> {
    match opts.format {
        Some(ArchiveFormat::None) => None,
        Some(f) => Some(f),
        None => ArchiveFormat::from_name(path.filename().unwrap_or_default()),
    }
}

/// A digest of the ETags of what would be copied, without copying it. `dest` is the destination
/// folder, left out when it lies inside a local folder source.
pub async fn probe(
    url: &url::Url,
    opts: &SourceOptions,
    dest: &FsPath,
    ctx: &FetchContext,
) -> Result<Option<String>, SourceError> {
    let at = locate(url, ctx)?.resolve_latest().await?;
    let folder = at.local_folder()?;
    if let Some(dir) = folder.clone().filter(|dir| !is_local_save(dir)) {
        let dest = dest.to_path_buf();
        let digest = blocking(move || unpack::folder::fingerprint(&dir, Some(&dest))).await?;
        return Ok(Some(digest));
    }
    let digest = if at.is_prefix || folder.is_some() {
        let objects = at.list().await?;
        // Keys are checked here too, so a hostile key is refused even when nothing else changed.
        keys::plan(&at.path, objects.clone(), &opts.filter)?;
        fingerprint(keys::kept(&at.path, &objects, &opts.filter))
    } else {
        fingerprint([&at.head().await?])
    };
    Ok(Some(digest))
}

/// Copies the object or prefix into `stage`; an archive key is unpacked.
pub async fn fetch(
    url: &url::Url,
    opts: &SourceOptions,
    stage: &FsPath,
    ctx: &FetchContext,
    progress: &SourceProgress,
) -> Result<Fetched, SourceError> {
    let at = locate(url, ctx)?.resolve_latest().await?;
    if let Some(dir) = at.local_folder()? {
        return fetch_folder(&at, dir, opts, stage, ctx, progress).await;
    }
    if at.is_prefix {
        return Ok(fetch_prefix(&at, opts, stage, ctx, progress).await?);
    }
    let meta = at.head().await?;
    let digest = fingerprint([&meta]);
    if let Some(format) = archive_format(&at.path, opts) {
        let unpacked = archive::fetch(&at, &meta, format, opts, stage, ctx, progress).await?;
        return Ok(Fetched {
            revision: Revision {
                kind: RevisionKind::Sha256,
                id: unpacked.sha256,
            },
            fingerprint: Some(digest),
            bytes: unpacked.bytes,
            files: unpacked.files,
        });
    }
    fetch_single(&at, meta, opts, stage, ctx, progress, digest).await
}

async fn fetch_prefix(
    at: &Located,
    opts: &SourceOptions,
    stage: &FsPath,
    ctx: &FetchContext,
    progress: &SourceProgress,
) -> Result<Fetched, ObjectError> {
    let objects = at.list().await?;
    let digest = fingerprint(keys::kept(&at.path, &objects, &opts.filter));
    if let Some(manifest) = artifacts_manifest(at, &objects).await? {
        let listed = (&objects[..], manifest);
        return fetch_save(at, &opts.filter, stage, ctx, progress, listed, digest).await;
    }
    let plan = keys::plan(&at.path, objects, &opts.filter)?;
    check_limits(plan.bytes(), plan.entries(), ctx)?;
    progress.set_total(plan.bytes());
    for dir in &plan.dirs {
        let path = stage.join(dir);
        std::fs::create_dir(&path).map_err(write_error(&path))?;
    }
    let downloads: Vec<download::Download> = plan
        .files
        .iter()
        .map(|f| download::Download {
            meta: f.meta.clone(),
            path: stage.join(&f.rel),
            hashing: download::Hashing::None,
        })
        .collect();
    tracing::info!(source = %at.shown, objects = downloads.len(), bytes = plan.bytes(), "copying prefix");
    let bytes = at
        .download(&downloads, ctx, progress)
        .await
        .map_err(listed_but_missing)?
        .bytes;
    Ok(Fetched {
        revision: Revision {
            kind: RevisionKind::Etags,
            id: digest.clone(),
        },
        fingerprint: Some(digest),
        bytes,
        files: plan.entries(),
    })
}

/// A local folder: a save of model artifacts is loaded as from any store (once it is known to
/// hold only files and folders); any other folder is copied through the archive guard, with the
/// same rules and limits as an archive.
async fn fetch_folder(
    at: &Located,
    dir: PathBuf,
    opts: &SourceOptions,
    stage: &FsPath,
    ctx: &FetchContext,
    progress: &SourceProgress,
) -> Result<Fetched, SourceError> {
    if is_local_save(&dir) {
        let checked = dir.clone();
        blocking(move || unpack::folder::check_plain(&checked)).await?;
        return Ok(fetch_prefix(at, opts, stage, ctx, progress).await?);
    }
    let unpack_opts = UnpackOptions::new(String::new(), opts, ctx.limits);
    let (dest, skip) = (
        stage.to_path_buf(),
        publish::dest_of_stage(stage).map(FsPath::to_path_buf),
    );
    let progress = progress.clone();
    tracing::info!(source = %at.shown, "copying a folder");
    let copied = blocking(move || {
        unpack::folder::copy_folder(&dir, &dest, skip.as_deref(), &unpack_opts, &progress)
    })
    .await?;
    Ok(Fetched {
        revision: Revision {
            kind: RevisionKind::Etags,
            id: copied.fingerprint.clone(),
        },
        fingerprint: Some(copied.fingerprint),
        bytes: copied.bytes,
        files: copied.files,
    })
}

/// True when a local folder is a save of model artifacts (it holds a manifest file).
fn is_local_save(dir: &FsPath) -> bool {
    std::fs::symlink_metadata(dir.join(MANIFEST_FILE)).is_ok_and(|m| m.is_file())
}

/// Runs filesystem work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, UnpackError> + Send + 'static,
) -> Result<T, UnpackError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| UnpackError::Io {
            action: "filesystem task failed for",
            path: PathBuf::new(),
            error: std::io::Error::other(e.to_string()),
        })?
}

/// A listed object that the store says is not there was listed under a path that is not its key
/// (or was deleted meanwhile): the listing cannot be trusted, so the source is refused.
fn listed_but_missing(error: ObjectError) -> ObjectError {
    match error {
        ObjectError::Storage(StorageError::Request {
            class: ErrorClass::NotFound,
            what,
            ..
        })
        | ObjectError::Download(DownloadError::Storage(StorageError::Request {
            class: ErrorClass::NotFound,
            what,
            ..
        })) => ObjectError::UnsafeKey {
            key: what,
            reason: keys::UNREADABLE.into(),
        },
        other => other,
    }
}

/// The manifest of a save of model artifacts, when the prefix is one: it holds a
/// `manifest.json` of Periscope's artifacts format directly below it.
async fn artifacts_manifest(
    at: &Located,
    objects: &[ObjectMeta],
) -> Result<Option<(Manifest, String)>, ObjectError> {
    let key = at.path.clone().join(MANIFEST_FILE);
    if !objects.iter().any(|m| m.location == key) {
        return Ok(None);
    }
    let request_error =
        |e: object_store::Error| StorageError::request(at.service, key.to_string(), &e);
    let bytes = at
        .store
        .get(&key)
        .await
        .map_err(request_error)?
        .bytes()
        .await
        .map_err(request_error)?;
    Ok(Manifest::parse(&bytes).map(|m| (m, artifacts::manifest::sha256_hex(&bytes))))
}

/// Copies a save of model artifacts: only the files its manifest names, each checked for size
/// before and sha256 after the download (part by part for a file the manifest lists parts of);
/// any difference refuses the whole source.
async fn fetch_save(
    at: &Located,
    filter: &Filter,
    stage: &FsPath,
    ctx: &FetchContext,
    progress: &SourceProgress,
    (objects, (manifest, manifest_sha)): (&[ObjectMeta], (Manifest, String)),
    digest: String,
) -> Result<Fetched, ObjectError> {
    let mut wanted = artifacts::verify::plan(&at.shown, &at.path, &manifest, objects)?;
    // Only what the patterns keep is loaded, and each of those is checked against the manifest.
    wanted.retain(|w| filter.keeps(&w.entry.path));
    let bytes: u64 = wanted.iter().map(|w| w.entry.size).sum();
    let files = wanted.len() as u64;
    check_limits(bytes, files, ctx)?;
    progress.set_total(bytes);
    let downloads: Vec<download::Download> = wanted
        .iter()
        .map(|w| download::Download {
            meta: w.meta.clone(),
            path: artifacts::verify::stage_path(stage, &w.entry),
            hashing: match w.entry.parts() {
                Some(parts) => download::Hashing::Parts(parts.size),
                None => download::Hashing::Whole,
            },
        })
        .collect();
    for d in &downloads {
        if let Some(parent) = d.path.parent() {
            std::fs::create_dir_all(parent).map_err(write_error(parent))?;
        }
    }
    tracing::info!(source = %at.shown, save = manifest.save, files = wanted.len(), "copying an artifacts save");
    let done = at.download(&downloads, ctx, progress).await?;
    let (save, dir) = (at.shown.clone(), stage.to_path_buf());
    let (bytes, hashed) = (done.bytes, done.digests);
    tokio::task::spawn_blocking(move || artifacts::verify::check(&save, &dir, &wanted, &hashed))
        .await
        .map_err(|e| artifacts::ArtifactsError::Task(e.to_string()))??;
    Ok(Fetched {
        revision: Revision {
            kind: RevisionKind::Sha256,
            id: manifest_sha,
        },
        fingerprint: Some(digest),
        bytes,
        files,
    })
}

#[allow(clippy::too_many_arguments)]
async fn fetch_single(
    at: &Located,
    meta: ObjectMeta,
    opts: &SourceOptions,
    stage: &FsPath,
    ctx: &FetchContext,
    progress: &SourceProgress,
    digest: String,
) -> Result<Fetched, SourceError> {
    check_limits(meta.size, 1, ctx)?;
    // `locate` found a file name: a URL without one is a prefix.
    let name = at.path.filename().unwrap_or("object").to_string();
    if !opts.filter.keeps(&name) {
        // Nothing to copy: the caller reports that the patterns leave nothing.
        return Ok(Fetched {
            revision: Revision {
                kind: RevisionKind::Etags,
                id: digest.clone(),
            },
            fingerprint: Some(digest),
            bytes: 0,
            files: 0,
        });
    }
    let path = stage.join(&name);
    progress.set_total(meta.size);
    let download = download::Download {
        meta,
        path,
        hashing: match opts.sha256 {
            Some(_) => download::Hashing::Whole,
            None => download::Hashing::None,
        },
    };
    let done = at
        .download(std::slice::from_ref(&download), ctx, progress)
        .await?;
    let bytes = done.bytes;
    let revision = match opts.sha256 {
        Some(expected) => {
            // Hashed as it streamed in, unless it came in ranges.
            let actual = match done.digests.first() {
                Some(download::Digests::Whole(digest)) => *digest,
                _ => sha256_file(&download.path)?,
            };
            if actual != expected {
                return Err(SourceError::Checksum {
                    expected: hex::encode(expected),
                    actual: hex::encode(actual),
                });
            }
            Revision {
                kind: RevisionKind::Sha256,
                id: hex::encode(actual),
            }
        }
        None => Revision {
            kind: RevisionKind::Etags,
            id: digest.clone(),
        },
    };
    Ok(Fetched {
        revision,
        fingerprint: Some(digest),
        bytes,
        files: 1,
    })
}

fn check_limits(bytes: u64, entries: u64, ctx: &FetchContext) -> Result<(), ObjectError> {
    if bytes > ctx.limits.max_bytes {
        return Err(ObjectError::OverLimit {
            what: "the total size in bytes",
            actual: bytes,
            limit: ctx.limits.max_bytes,
        });
    }
    if entries > ctx.limits.max_files {
        return Err(ObjectError::OverLimit {
            what: "the number of files and folders",
            actual: entries,
            limit: ctx.limits.max_files,
        });
    }
    Ok(())
}

fn sha256_file(path: &FsPath) -> Result<[u8; 32], ObjectError> {
    use sha2::{Digest, Sha256};
    let mut file = std::fs::File::open(path).map_err(write_error(path))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(write_error(path))?;
    Ok(hasher.finalize().into())
}
