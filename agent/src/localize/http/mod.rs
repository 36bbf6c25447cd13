//! HTTP(S) archive sources: download with retries and resume, unpacking while the bytes arrive.
//!
//! The network side ([`download`]) and the disk side ([`unpack`](crate::localize::unpack)) run at
//! the same time, joined by a bounded channel: tar and tar.gz never touch the disk except as
//! unpacked files. The sha256 of the exact bytes received is computed on the way and checked
//! against `#sha256=` before anything is published. This module owns the mapping from HTTP
//! outcomes to error classes (404 → not found, 401/403 → auth, 429/5xx/timeouts → retried, then
//! network) and never prints or shows an unredacted URL.

mod client;
mod download;

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc;

use super::unpack::{self, HashingReader, UnpackOptions};
use super::{
    FetchContext, Fetched, Revision, RevisionKind, SourceError, SourceOptions, SourceProgress,
};
use crate::error::{Classify, ErrorClass};
use crate::net::reqwest_text;
use crate::retry::Verdict;

/// An HTTP failure. Invariant: no variant holds a URL or credentials (the caller shows the
/// redacted URL).
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot use the CA file `{}`: {detail}", path.display())]
    CaFile { path: PathBuf, detail: String },
    #[error("cannot set up the HTTP client: {detail}")]
    Client { detail: String },
    #[error("the server answered HTTP {status}")]
    Status {
        status: u16,
        retry_after: Option<Duration>,
    },
    #[error("cannot connect: {detail}")]
    Connect { detail: String },
    /// The server's host name (or the proxy's) did not resolve.
    #[error("cannot resolve host `{host}`")]
    Resolve { host: String },
    #[error(transparent)]
    Proxy(#[from] crate::net::proxy::ProxyError),
    #[error("the download broke off: {detail}")]
    Body { detail: String },
    #[error("no data for {seconds}s; the connection was given up")]
    Stalled { seconds: u64 },
    #[error("the file changed on the server while it was downloading")]
    Changed,
    #[error("the download was stopped because unpacking failed")]
    Cancelled,
    #[error("internal error: {0}")]
    Internal(String),
}

impl HttpError {
    /// Whether another try can help, and when.
    pub fn verdict(&self) -> Verdict {
        match self {
            HttpError::Status {
                status,
                retry_after,
            } if *status == 408 || *status == 429 || *status >= 500 => match retry_after {
                Some(d) => Verdict::RetryAfter(*d),
                None => Verdict::Transient,
            },
            HttpError::Connect { .. }
            | HttpError::Resolve { .. }
            | HttpError::Body { .. }
            | HttpError::Stalled { .. } => Verdict::Transient,
            _ => Verdict::Permanent,
        }
    }

    fn from_send(e: reqwest::Error) -> HttpError {
        if crate::net::is_dns_failure(&e) {
            if let Some(host) = e.url().and_then(|u| host_to_resolve(u.as_str())) {
                return HttpError::Resolve { host };
            }
        }
        if e.is_timeout() {
            HttpError::Connect {
                detail: format!("timed out ({})", reqwest_text(&e)),
            }
        } else if e.is_connect() || e.is_request() {
            HttpError::Connect {
                detail: reqwest_text(&e),
            }
        } else {
            HttpError::Body {
                detail: reqwest_text(&e),
            }
        }
    }

    fn from_body(e: &reqwest::Error) -> HttpError {
        HttpError::Body {
            detail: reqwest_text(e),
        }
    }

    fn tls_related(&self) -> bool {
        matches!(self, HttpError::Connect { detail } if detail.to_ascii_lowercase().contains("certificate"))
    }
}

impl Classify for HttpError {
    fn class(&self) -> ErrorClass {
        match self {
            HttpError::CaFile { .. } | HttpError::Client { .. } | HttpError::Proxy(_) => {
                ErrorClass::Usage
            }
            HttpError::Status { status, .. } => match status {
                404 | 410 => ErrorClass::NotFound,
                401 | 403 | 407 => ErrorClass::Auth,
                _ => ErrorClass::Network,
            },
            HttpError::Connect { .. }
            | HttpError::Resolve { .. }
            | HttpError::Body { .. }
            | HttpError::Stalled { .. }
            | HttpError::Changed => ErrorClass::Network,
            HttpError::Cancelled | HttpError::Internal(_) => ErrorClass::Internal,
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            HttpError::CaFile { .. } => {
                Some("--ca-file must name a readable PEM file of CA certificates".into())
            }
            HttpError::Status {
                status: 404 | 410, ..
            } => Some("check the URL; the server has no file there".into()),
            HttpError::Status { status: 407, .. } => Some(
                "the proxy asks for credentials: put them in the proxy URL \
                 (http://user:password@proxy:port)"
                    .into(),
            ),
            HttpError::Status {
                status: 401 | 403, ..
            } => Some(
                "the server refused the credentials: check the user and token in the URL, or that \
                 a presigned URL has not expired"
                    .into(),
            ),
            HttpError::Resolve { .. } => Some(RESOLVE_HINT.into()),
            HttpError::Proxy(_) => Some(PROXY_HINT.into()),
            HttpError::Changed => Some(
                "the file was replaced during the download; run again, or pin it with #sha256="
                    .into(),
            ),
            e if e.tls_related() => {
                Some("the server's certificate is not trusted; pass its CA with --ca-file".into())
            }
            _ => None,
        }
    }
}

/// The HTTP client of a localize run (TLS settings, timeouts, the proxy rule), for other
/// requests of the run than archive downloads (sync webhooks).
pub fn client(ctx: &FetchContext) -> Result<reqwest::Client, HttpError> {
    client::build(ctx)
}

/// What to do about a host that did not resolve.
pub(crate) const RESOLVE_HINT: &str =
    "check the host name in the URL (a typo?), and that this machine's DNS answers for it";

/// What to do about a proxy setting that cannot be used.
pub(crate) const PROXY_HINT: &str =
    "set http_proxy / https_proxy to an http:// proxy URL (http://host:port), or unset them";

/// The host a request to `url` resolves first: the proxy's when the proxy rule sends it through
/// one.
fn host_to_resolve(url: &str) -> Option<String> {
    crate::net::proxy::Proxies::from_env()
        .unwrap_or_else(|_| crate::net::proxy::Proxies::none())
        .host_to_resolve(url)
}

/// The last path segment of the URL, decoded: the file name used for format guessing and for
/// `format=none`.
fn file_name(url: &url::Url) -> String {
    let last = url
        .path_segments()
        .and_then(|mut s| s.next_back())
        .unwrap_or_default();
    url::form_urlencoded::parse(format!("v={last}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// The file's fingerprint now (ETag, or modification time and length), from a HEAD request (or a
/// one-byte GET where HEAD is refused, as presigned GET URLs do), without downloading the file.
/// `None` when the server gives none or cannot be asked: the source is then fetched again, which
/// is always safe.
pub async fn probe(
    url: &url::Url,
    _opts: &SourceOptions,
    ctx: &FetchContext,
) -> Result<Option<String>, SourceError> {
    let client = client::build(ctx)?;
    let result = ctx
        .retry
        .run(
            |_| async {
                let mut response = client
                    .head(url.clone())
                    .send()
                    .await
                    .map_err(HttpError::from_send)?;
                if matches!(response.status().as_u16(), 403 | 405 | 501) {
                    // Presigned URLs are signed for GET only: ask for one byte instead.
                    response = client
                        .get(url.clone())
                        .header(reqwest::header::RANGE, "bytes=0-0")
                        .send()
                        .await
                        .map_err(HttpError::from_send)?;
                }
                let status = response.status();
                if status.is_server_error() || status.as_u16() == 429 {
                    return Err(HttpError::Status {
                        status: status.as_u16(),
                        retry_after: None,
                    });
                }
                Ok(status
                    .is_success()
                    .then(|| download::Meta::from_headers(response.headers())))
            },
            HttpError::verdict,
            |e, n, _| tracing::debug!(attempt = n, error = %e, "HEAD failed; retrying"),
        )
        .await;
    match result {
        Ok(meta) => Ok(meta.and_then(|m| m.fingerprint())),
        // The download will retry and report properly; a failed probe only means "fetch".
        Err(e) => {
            tracing::debug!(error = %e, "cannot probe; fetching");
            Ok(None)
        }
    }
}

/// Downloads the file into `stage`, unpacking it while it streams, and checks `#sha256=`.
pub async fn fetch(
    url: &url::Url,
    opts: &SourceOptions,
    stage: &Path,
    ctx: &FetchContext,
    progress: &SourceProgress,
) -> Result<Fetched, SourceError> {
    let client = client::build(ctx)?;
    let (tx, rx) = mpsc::channel(download::CHANNEL_CHUNKS);
    let unpack_opts = UnpackOptions::new(file_name(url), opts, ctx.limits);
    let format = opts.format;
    let dest = stage.to_path_buf();
    let unpack_progress = progress.clone();
    let unpacker = tokio::task::spawn_blocking(move || {
        let mut reader = HashingReader::new(download::ChannelReader::new(rx));
        let stats = unpack::unpack(&mut reader, format, &dest, &unpack_opts, &unpack_progress)?;
        let digest = reader.finish().map_err(unpack::UnpackError::Read)?;
        Ok::<_, unpack::UnpackError>((stats, digest))
    });
    let downloader = async move {
        let result = download::run(&client, url, ctx, &tx, progress).await;
        if let Err(e) = &result {
            // Tell the unpacker the input ended in failure, not at its end.
            let _ = tx.send(Err(io::Error::other(e.to_string()))).await;
        }
        result
    };
    let (downloaded, unpacked) = tokio::join!(downloader, unpacker);
    let unpacked = unpacked.map_err(|e| HttpError::Internal(format!("unpack task: {e}")))?;
    let (meta, (stats, digest)) = match (downloaded, unpacked) {
        // The unpacker stopped first (a refused entry); its reason is the real one.
        (Err(HttpError::Cancelled), Err(e)) => return Err(e.into()),
        (Err(e), _) => return Err(e.into()),
        (Ok(_), Err(e)) => return Err(e.into()),
        (Ok(meta), Ok(done)) => (meta, done),
    };
    if let Some(expected) = opts.sha256 {
        if expected != digest.sha256 {
            return Err(SourceError::Checksum {
                expected: hex::encode(expected),
                actual: digest.hex(),
            });
        }
    }
    tracing::debug!(format = ?stats.format, bytes = digest.bytes, "archive downloaded and unpacked");
    Ok(Fetched {
        revision: Revision {
            kind: RevisionKind::Sha256,
            id: digest.hex(),
        },
        fingerprint: meta.fingerprint(),
        bytes: stats.bytes,
        files: stats.files,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_name_is_the_decoded_last_segment() {
        let u = url::Url::parse("https://h.test/a/my%20job.tar.gz?sig=1").unwrap();
        assert_eq!(file_name(&u), "my job.tar.gz");
    }

    #[test]
    fn classes_and_verdicts() {
        let s = |status| HttpError::Status {
            status,
            retry_after: None,
        };
        assert_eq!(s(404).class(), ErrorClass::NotFound);
        assert_eq!(s(403).class(), ErrorClass::Auth);
        assert_eq!(s(503).class(), ErrorClass::Network);
        assert_eq!(s(404).verdict(), Verdict::Permanent);
        assert_eq!(s(503).verdict(), Verdict::Transient);
        let later = HttpError::Status {
            status: 429,
            retry_after: Some(Duration::from_secs(2)),
        };
        assert_eq!(later.verdict(), Verdict::RetryAfter(Duration::from_secs(2)));
    }
}
