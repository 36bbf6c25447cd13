//! The resuming download: one GET, and after a dropped connection or a stall, a `Range` request
//! for the rest (guarded by `If-Range`, so a file that changed meanwhile is never spliced).
//!
//! Bytes go into a bounded channel that [`ChannelReader`] turns into a blocking `Read` for the
//! unpacker, so the network and the disk work at the same time and memory stays bounded. This
//! module never touches the disk and never decides what the bytes are.

use std::io::{self, Read};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{self, HeaderMap};
use reqwest::{Client, StatusCode};
use tokio::sync::mpsc;

use super::HttpError;
use crate::localize::{FetchContext, SourceProgress};
use crate::redact::redact_url;
use crate::retry::Verdict;

/// What the channel carries: body bytes in order, or the reason the download stopped.
pub(super) type Chunk = io::Result<Bytes>;

/// Chunks buffered between the network and the unpacker (a few MiB at most).
pub(super) const CHANNEL_CHUNKS: usize = 64;

/// What the server said about the file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Meta {
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    pub length: Option<u64>,
}

impl Meta {
    pub(super) fn from_headers(h: &HeaderMap) -> Meta {
        let text = |name| {
            h.get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        Meta {
            etag: text(header::ETAG),
            last_modified: text(header::LAST_MODIFIED),
            // A partial answer's own length is the part's; the file's is after the `/`.
            length: match text(header::CONTENT_RANGE) {
                Some(range) => range.rsplit('/').next().and_then(|t| t.parse().ok()),
                None => text(header::CONTENT_LENGTH).and_then(|v| v.parse().ok()),
            },
        }
    }

    /// The cheap identity of this content, if the server gives one: the ETag, or else the
    /// modification time and length.
    pub fn fingerprint(&self) -> Option<String> {
        match (&self.etag, &self.last_modified) {
            (Some(etag), _) => Some(format!("etag {etag}")),
            (None, Some(lm)) => Some(format!(
                "last-modified {lm} length {}",
                self.length.map(|l| l.to_string()).unwrap_or_default()
            )),
            (None, None) => None,
        }
    }

    /// The value for `If-Range`: a strong ETag, or the modification time.
    fn validator(&self) -> Option<&str> {
        match &self.etag {
            Some(e) if !e.starts_with("W/") => Some(e),
            _ => self.last_modified.as_deref(),
        }
    }
}

/// Progress of one download across its attempts. Invariant: `offset` bytes have been sent into
/// the channel, and `meta` is set once the first response arrived.
#[derive(Default)]
struct State {
    offset: u64,
    meta: Option<Meta>,
}

/// Downloads `url` into `tx`, retrying and resuming per `ctx`. The retry budget starts again
/// whenever an attempt made progress, so a long download over a flaky link finishes, while a
/// server that never sends a byte fails after `ctx.retry.attempts` tries.
pub(super) async fn run(
    client: &Client,
    url: &url::Url,
    ctx: &FetchContext,
    tx: &mpsc::Sender<Chunk>,
    progress: &SourceProgress,
) -> Result<Meta, HttpError> {
    let state = Mutex::new(State::default());
    let shown = redact_url(url.as_str());
    loop {
        let before = offset(&state);
        let result = ctx
            .retry
            .run(
                |_| attempt(client, url, ctx.idle_timeout, &state, tx, progress),
                HttpError::verdict,
                |e, n, wait| match e {
                    HttpError::Resolve { host } => {
                        crate::net::warn_unresolved(host, n, ctx.retry.attempts, Some(wait))
                    }
                    _ => tracing::warn!(url = %shown, attempt = n, error = %e,
                        wait_ms = wait.as_millis() as u64, "download failed; retrying"),
                },
            )
            .await;
        match result {
            Ok(()) => break,
            Err(e) if e.verdict() != Verdict::Permanent && offset(&state) > before => {
                tracing::info!(url = %shown, offset = offset(&state), "download made progress; retrying with a fresh budget");
            }
            Err(e) => return Err(e),
        }
    }
    let meta = lock(&state).meta.clone().unwrap_or_default();
    Ok(meta)
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    // A poisoned lock means a panic elsewhere in this download; the data is still plain numbers.
    state.lock().unwrap_or_else(|p| p.into_inner())
}

fn offset(state: &Mutex<State>) -> u64 {
    lock(state).offset
}

async fn attempt(
    client: &Client,
    url: &url::Url,
    idle: Duration,
    state: &Mutex<State>,
    tx: &mpsc::Sender<Chunk>,
    progress: &SourceProgress,
) -> Result<(), HttpError> {
    let (offset, known) = {
        let s = lock(state);
        (s.offset, s.meta.clone())
    };
    let mut request = client.get(url.clone());
    if offset > 0 {
        request = request.header(header::RANGE, format!("bytes={offset}-"));
        if let Some(v) = known.as_ref().and_then(Meta::validator) {
            request = request.header(header::IF_RANGE, v);
        }
    }
    let mut response = request.send().await.map_err(HttpError::from_send)?;
    let status = response.status();
    let meta = Meta::from_headers(response.headers());
    let mut skip = 0u64;
    match status {
        StatusCode::OK if offset == 0 => {
            if let Some(length) = meta.length {
                progress.set_total(length);
            }
            lock(state).meta = Some(meta);
        }
        StatusCode::OK => {
            // The server sent the whole file again: fine if it is the same file, skip what we
            // have; a different file cannot be spliced onto the bytes already unpacked.
            let same = known.as_ref().is_some_and(|k| {
                k.etag == meta.etag && (k.etag.is_some() || k.last_modified == meta.last_modified)
            });
            if !same {
                return Err(HttpError::Changed);
            }
            skip = offset;
        }
        StatusCode::PARTIAL_CONTENT if offset > 0 => {
            let start = response
                .headers()
                .get(header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(content_range_start);
            if start != Some(offset) {
                return Err(HttpError::Changed);
            }
        }
        StatusCode::RANGE_NOT_SATISFIABLE
            if offset > 0 && known.as_ref().and_then(|k| k.length) == Some(offset) =>
        {
            return Ok(());
        }
        _ => {
            let retry_after = response
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(crate::retry::parse_retry_after);
            return Err(HttpError::Status {
                status: status.as_u16(),
                retry_after,
            });
        }
    }
    loop {
        let chunk = match tokio::time::timeout(idle, response.chunk()).await {
            Err(_) => {
                return Err(HttpError::Stalled {
                    seconds: idle.as_secs(),
                })
            }
            Ok(Err(e)) => return Err(HttpError::from_body(&e)),
            Ok(Ok(None)) => break,
            Ok(Ok(Some(chunk))) => chunk,
        };
        let chunk = if skip > 0 {
            let drop = skip.min(chunk.len() as u64);
            skip -= drop;
            chunk.slice(drop as usize..)
        } else {
            chunk
        };
        if chunk.is_empty() {
            continue;
        }
        let len = chunk.len() as u64;
        tx.send(Ok(chunk)).await.map_err(|_| HttpError::Cancelled)?;
        lock(state).offset += len;
    }
    let s = lock(state);
    match s.meta.as_ref().and_then(|m| m.length) {
        Some(length) if s.offset < length => Err(HttpError::Body {
            detail: format!("the connection closed after {} of {length} bytes", s.offset),
        }),
        _ => Ok(()),
    }
}

/// The first byte offset of a `Content-Range: bytes START-END/TOTAL` value.
fn content_range_start(value: &str) -> Option<u64> {
    value
        .trim()
        .strip_prefix("bytes ")?
        .split('-')
        .next()?
        .trim()
        .parse()
        .ok()
}

/// A blocking `Read` over the channel: the unpacker's side of the download. Invariant: `current`
/// holds the unread rest of the last chunk received.
pub(super) struct ChannelReader {
    rx: mpsc::Receiver<Chunk>,
    current: Bytes,
}

impl ChannelReader {
    pub(super) fn new(rx: mpsc::Receiver<Chunk>) -> Self {
        ChannelReader {
            rx,
            current: Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(e)) => return Err(e),
                // The sender is dropped only after a complete download (failures send an error).
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_range() {
        assert_eq!(content_range_start("bytes 100-199/200"), Some(100));
        assert_eq!(content_range_start("bytes */200"), None);
    }

    #[test]
    fn fingerprint_prefers_etag() {
        let m = Meta {
            etag: Some("\"abc\"".into()),
            last_modified: Some("x".into()),
            length: Some(3),
        };
        assert_eq!(m.fingerprint().as_deref(), Some("etag \"abc\""));
        assert_eq!(m.validator(), Some("\"abc\""));
        let weak = Meta {
            etag: Some("W/\"abc\"".into()),
            ..Meta::default()
        };
        assert_eq!(weak.validator(), None);
    }
}
