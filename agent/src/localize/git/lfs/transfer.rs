//! Getting LFS objects' bytes, from the batch API over HTTP(S) or from a local repository's
//! object folder, into temporary files. Every object is checked as it is written: a byte past
//! its size, a short file or a sha256 other than its name is an integrity failure, and nothing
//! of it is used.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use futures::{StreamExt, TryStreamExt};
use serde::Deserialize;
use sha2::Digest;

use super::super::error::GitError;
use super::super::http::{send_error, status_error, transfer_error};
use super::super::session::Session;
use super::endpoint::Endpoint;
use super::pointer::Pointer;
use crate::localize::SourceProgress;

/// Objects asked for in one batch request (git-lfs's own batch size).
const BATCH: usize = 100;
/// Objects downloaded at once.
const PARALLEL: usize = 4;
/// The largest batch reply read: a hundred objects' links take a few tens of kilobytes.
const MAX_REPLY: usize = 16 << 20;
const LFS_JSON: &str = "application/vnd.git-lfs+json";

/// One object to fetch, and a file of the checkout that holds it (for messages).
pub struct Wanted {
    pub pointer: Pointer,
    pub path: String,
}

/// Where the object `oid` is put by [`fetch_all`].
pub fn temp_path(dir: &Path, oid: &str) -> PathBuf {
    dir.join(oid)
}

/// Fetches every object in `wanted` (distinct oids) into `dir`, verified.
pub fn fetch_all(
    endpoint: &Endpoint,
    wanted: &[Wanted],
    dir: &Path,
    session: &Session,
    progress: &SourceProgress,
) -> Result<(), GitError> {
    match endpoint {
        Endpoint::Local(folders) => {
            for w in wanted {
                copy_local(folders, w, dir, progress)?;
            }
            Ok(())
        }
        Endpoint::Http(api) => {
            let runtime = tokio::runtime::Handle::try_current()
                .map_err(|_| GitError::Internal("Git LFS ran outside the runtime".into()))?;
            runtime.block_on(async {
                for chunk in wanted.chunks(BATCH) {
                    let links = batch(api, chunk, session).await?;
                    futures::stream::iter(chunk.iter().zip(links))
                        .map(|(w, link)| download(w, link, dir, session, progress))
                        .buffer_unordered(PARALLEL)
                        .try_collect::<()>()
                        .await?;
                }
                Ok(())
            })
        }
    }
}

#[derive(Deserialize)]
struct BatchReply {
    #[serde(default)]
    transfer: Option<String>,
    #[serde(default)]
    objects: Vec<ObjectReply>,
}

#[derive(Deserialize)]
struct ObjectReply {
    oid: String,
    #[serde(default)]
    actions: Option<Actions>,
    #[serde(default)]
    error: Option<ObjectError>,
}

#[derive(Deserialize)]
struct Actions {
    download: Option<Link>,
}

/// Where to download one object, and the headers the server asks for (often its own token).
#[derive(Deserialize)]
struct Link {
    href: String,
    #[serde(default)]
    header: HashMap<String, String>,
}

#[derive(Deserialize)]
struct ObjectError {
    code: u16,
    #[serde(default)]
    message: String,
}

/// Asks the batch API where to download `chunk`; the links are in `chunk`'s order.
async fn batch(api: &url::Url, chunk: &[Wanted], session: &Session) -> Result<Vec<Link>, GitError> {
    let url = url::Url::parse(&format!(
        "{}/objects/batch",
        api.as_str().trim_end_matches('/')
    ))
    .map_err(|e| GitError::Internal(e.to_string()))?;
    let body = serde_json::json!({
        "operation": "download",
        "transfers": ["basic"],
        "hash_algo": "sha256",
        "objects": chunk.iter().map(|w| serde_json::json!({
            "oid": w.pointer.oid, "size": w.pointer.size,
        })).collect::<Vec<_>>(),
    });
    let mut request = session
        .http_client()
        .post(url.clone())
        .header(reqwest::header::ACCEPT, LFS_JSON)
        .header(reqwest::header::CONTENT_TYPE, LFS_JSON)
        .body(body.to_string());
    let credentials = session.http_credentials(&url);
    if let Some((user, password)) = &credentials {
        request = request.basic_auth(user, Some(password.expose()));
    }
    let mut response = request.send().await.map_err(|e| lfs(send_error(&e)))?;
    if let Some(error) = status_error(response.status().as_u16(), credentials.is_some()) {
        return Err(lfs(error));
    }
    let mut text = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| lfs(transfer_error(&e)))?
    {
        text.extend_from_slice(&chunk);
        if text.len() > MAX_REPLY {
            return Err(lfs(GitError::Remote {
                detail: "the batch reply is larger than 16 MiB".into(),
            }));
        }
    }
    let reply: BatchReply = serde_json::from_slice(&text).map_err(|e| {
        lfs(GitError::Remote {
            detail: format!("the batch reply is not what the LFS API sends: {e}"),
        })
    })?;
    if reply.transfer.as_deref().is_some_and(|t| t != "basic") {
        return Err(lfs(GitError::Remote {
            detail: "the server chose a transfer other than `basic`".into(),
        }));
    }
    let mut by_oid: HashMap<String, ObjectReply> = reply
        .objects
        .into_iter()
        .map(|o| (o.oid.to_ascii_lowercase(), o))
        .collect();
    chunk
        .iter()
        .map(|w| {
            let missing = |detail: String| GitError::LfsMissing {
                path: w.path.clone(),
                detail,
            };
            let object = by_oid
                .remove(&w.pointer.oid)
                .ok_or_else(|| missing("the server's batch reply does not list it".into()))?;
            if let Some(e) = object.error {
                return Err(match e.code {
                    404 | 410 => {
                        missing(format!("the LFS server has no such object ({})", e.message))
                    }
                    422 => GitError::LfsObject {
                        path: w.path.clone(),
                        detail: format!("the LFS server refused it: {}", e.message),
                    },
                    code => lfs(GitError::Remote {
                        detail: format!("error {code} for one object: {}", e.message),
                    }),
                });
            }
            object
                .actions
                .and_then(|a| a.download)
                .ok_or_else(|| missing("the server gave no download link".into()))
        })
        .collect()
}

/// Says that an HTTP failure happened talking to the LFS server.
fn lfs(error: GitError) -> GitError {
    match error {
        GitError::AuthRefused { detail } => GitError::AuthRefused {
            detail: format!("Git LFS: {detail}"),
        },
        GitError::RepoNotFound { detail } => GitError::RepoNotFound {
            detail: format!("Git LFS server: {detail}"),
        },
        GitError::Remote { detail } => GitError::Remote {
            detail: format!("Git LFS server: {detail}"),
        },
        GitError::Unreachable { detail } => GitError::Unreachable {
            detail: format!("Git LFS server: {detail}"),
        },
        other => other,
    }
}

/// Downloads one object to its temporary file, verified.
async fn download(
    wanted: &Wanted,
    link: Link,
    dir: &Path,
    session: &Session,
    progress: &SourceProgress,
) -> Result<(), GitError> {
    let url = url::Url::parse(&link.href).map_err(|_| {
        lfs(GitError::Remote {
            detail: "a download link is not a URL".into(),
        })
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(lfs(GitError::Remote {
            detail: "a download link is not http(s)".into(),
        }));
    }
    let mut request = session.http_client().get(url.clone());
    let mut authorized = false;
    for (name, value) in &link.header {
        authorized |= name.eq_ignore_ascii_case("authorization");
        request = request.header(name.as_str(), value.as_str());
    }
    // The server's own header (a token for its storage) wins; else the source's credentials, and
    // only on the source's own server.
    let credentials = (!authorized)
        .then(|| session.http_credentials(&url))
        .flatten();
    if let Some((user, password)) = &credentials {
        request = request.basic_auth(user, Some(password.expose()));
    }
    let mut response = request.send().await.map_err(|e| lfs(send_error(&e)))?;
    if let Some(error) = status_error(
        response.status().as_u16(),
        credentials.is_some() || authorized,
    ) {
        return Err(lfs(error));
    }
    let mut out = Verifier::create(dir, wanted)?;
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| lfs(transfer_error(&e)))?
    {
        out.write(&chunk)?;
        progress.advance(chunk.len() as u64);
    }
    out.finish()
}

/// Copies one object from a local repository's object folders, verified.
fn copy_local(
    folders: &[PathBuf],
    wanted: &Wanted,
    dir: &Path,
    progress: &SourceProgress,
) -> Result<(), GitError> {
    let oid = &wanted.pointer.oid;
    let Some(mut source) = folders
        .iter()
        .map(|f| f.join(&oid[..2]).join(&oid[2..4]).join(oid))
        .find_map(|p| std::fs::File::open(p).ok())
    else {
        return Err(GitError::LfsMissing {
            path: wanted.path.clone(),
            detail: "the local repository's lfs/objects folder does not hold it".into(),
        });
    };
    let mut out = Verifier::create(dir, wanted)?;
    let mut buf = vec![0; 1 << 16];
    loop {
        let n = source.read(&mut buf).map_err(|e| GitError::Local {
            detail: format!("cannot read LFS object {oid}: {e}"),
        })?;
        if n == 0 {
            break;
        }
        out.write(&buf[..n])?;
        progress.advance(n as u64);
    }
    out.finish()
}

/// An object's temporary file being written. Invariant: `written` bytes were written and hashed,
/// and never more than the pointer's size.
struct Verifier<'a> {
    wanted: &'a Wanted,
    file: std::fs::File,
    path: PathBuf,
    hash: sha2::Sha256,
    written: u64,
}

impl<'a> Verifier<'a> {
    fn create(dir: &Path, wanted: &'a Wanted) -> Result<Verifier<'a>, GitError> {
        let path = temp_path(dir, &wanted.pointer.oid);
        let file = std::fs::File::create(&path).map_err(|e| GitError::Local {
            detail: format!("cannot create `{}`: {e}", path.display()),
        })?;
        Ok(Verifier {
            wanted,
            file,
            path,
            hash: sha2::Sha256::new(),
            written: 0,
        })
    }

    fn mismatch(&self, detail: String) -> GitError {
        let _ = std::fs::remove_file(&self.path);
        GitError::LfsObject {
            path: self.wanted.path.clone(),
            detail,
        }
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), GitError> {
        self.written += bytes.len() as u64;
        if self.written > self.wanted.pointer.size {
            return Err(self.mismatch(format!(
                "the server sent more than its {} bytes",
                self.wanted.pointer.size
            )));
        }
        self.hash.update(bytes);
        self.file.write_all(bytes).map_err(|e| GitError::Local {
            detail: format!("cannot write `{}`: {e}", self.path.display()),
        })
    }

    fn finish(self) -> Result<(), GitError> {
        let size = self.wanted.pointer.size;
        if self.written != size {
            return Err(self.mismatch(format!(
                "the server sent {} bytes of its {size}",
                self.written
            )));
        }
        let actual = hex::encode(self.hash.clone().finalize());
        if actual != self.wanted.pointer.oid {
            return Err(self.mismatch(format!(
                "its content has sha256 {actual}, not {}",
                self.wanted.pointer.oid
            )));
        }
        Ok(())
    }
}
