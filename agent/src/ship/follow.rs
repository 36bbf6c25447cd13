//! One followed generation of a log: reading what was appended, noticing that the file was
//! truncated under it, and cutting what was read into chunks.
//!
//! A truncation (`copytruncate`) is seen either as the file being shorter than what was read, or,
//! when the writer has already written more than that again (a reader that lags behind a fast
//! writer), as the bytes before the read offset no longer being the ones read there (the
//! [`Window`]) or the first bytes no longer matching the fingerprint: checked after every read
//! that found new bytes, before those bytes are kept. The window catches a rewrite behind a
//! banner that every generation starts with. A rewrite that puts the very same KiB before the old
//! read offset (only the banner was read) is not seen here; the copy rotation made shows it (see
//! [`recognize`](super::recognize)), and the bytes read meanwhile are read again from the copy.

use std::fs::File;
use std::path::PathBuf;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use super::checkpoint::{Held, Tracked};
use super::identity::{FileId, Fingerprint, Prefix, Window, FINGERPRINT_BYTES};
use super::recognize::Candidate;
use super::source::Source;

/// How many chunk ends each generation remembers the prefix at.
const ENDS_KEPT: usize = 8;
const READ_BLOCK: usize = 1 << 20;

/// A chunk whose intent is recorded and whose upload has not completed. Invariant: `prefix` is the
/// generation's prefix at `end`, and `tail` the window that ends there.
pub struct Pending {
    pub end: u64,
    pub gz: Bytes,
    pub prefix: Prefix,
    pub tail: Window,
}

/// A chunk cut from the buffer, not compressed yet.
pub struct Cut {
    pub raw: Bytes,
    pub end: u64,
    pub prefix: Prefix,
    pub tail: Window,
}

/// What one read found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    Bytes(u64),
    /// The file was truncated (or rewritten from the start) under us; it is `size` bytes now.
    Truncated {
        size: u64,
    },
}

/// One followed generation. Invariants: `t.in_flight == pending.as_ref().map(|p| p.end)` once the
/// chunk was compressed; `buf` holds the bytes `[base().len, read_off())`; `tail` is the window
/// of the source that ends at `read_off()` (plain sources).
pub struct Active {
    pub t: Tracked,
    pub source: Option<Source>,
    pub pending: Option<Pending>,
    pub buf: BytesMut,
    pub buf_since: Option<Instant>,
    /// When reading last found no new bytes (for retiring detached files).
    pub eof_since: Option<Instant>,
    /// Set for a generation that was truncated under us; it only ships what it still holds.
    pub closed: bool,
    pub tail: Window,
    /// The shipper's scan in which this generation began to be followed (0: before the first,
    /// from the checkpoint).
    pub since_scan: u64,
}

impl Active {
    /// A new generation of a log path, followed from its first byte.
    pub fn fresh(
        logical: String,
        generation: u64,
        path: PathBuf,
        id: FileId,
        fingerprint: Fingerprint,
        seen_size: u64,
        file: File,
    ) -> Active {
        Active::following(
            Tracked {
                logical,
                generation,
                path,
                id,
                fingerprint,
                shipped: 0,
                in_flight: None,
                seen_size,
                detached: false,
                crc: 0,
                tail: Window::default(),
                ends: Vec::new(),
                gzip: false,
            },
            Source::Plain(file),
        )
    }

    /// Follows `t` through `source`, with nothing read or buffered past what is stored.
    pub fn following(t: Tracked, source: Source) -> Active {
        let tail = t.tail;
        Active {
            t,
            source: Some(source),
            pending: None,
            buf: BytesMut::new(),
            buf_since: None,
            eof_since: None,
            closed: false,
            tail,
            since_scan: 0,
        }
    }

    /// Follows the generation a no longer read file holds, from the end of what it holds, through
    /// `source` (the file itself, or a file that holds more of it).
    pub fn resumed(h: &Held, path: PathBuf, id: FileId, source: Source, seen_size: u64) -> Active {
        let gzip = source.is_gzip();
        Active::following(
            Tracked {
                logical: h.logical.clone(),
                generation: h.generation,
                path,
                id,
                fingerprint: h.fingerprint,
                shipped: h.held.len,
                in_flight: None,
                seen_size,
                detached: true,
                crc: h.held.crc,
                tail: if gzip { Window::default() } else { h.tail },
                ends: h.ends.clone(),
                gzip,
            },
            source,
        )
    }

    /// Takes what a checkpoint written before CRCs were kept lacks from the file itself.
    pub fn adopt_legacy(&mut self) {
        let Some(Source::Plain(f)) = self.source.as_ref() else {
            return;
        };
        let shipped = self.t.shipped;
        let s = super::identity::scan_prefixes(
            &mut super::identity::FileAt { file: f, pos: 0 },
            &[shipped],
        );
        if let Some(p) = s.prefix(shipped) {
            self.t.crc = p.crc;
        }
        self.t.tail = Window::take(f, shipped).unwrap_or_default();
        self.tail = self.t.tail;
    }

    /// What is stored or being stored: the prefix the buffer follows.
    pub fn base(&self) -> Prefix {
        match &self.pending {
            Some(p) => p.prefix,
            None => self.t.stored(),
        }
    }

    pub fn read_off(&self) -> u64 {
        self.t.in_flight.unwrap_or(self.t.shipped) + self.buf.len() as u64
    }

    /// Bytes read and not yet stored.
    pub fn held(&self) -> u64 {
        self.read_off() - self.t.shipped
    }

    /// The source file when it is plain and still holds what was read from it.
    pub fn intact(&self) -> Option<&File> {
        let Some(Source::Plain(f)) = self.source.as_ref() else {
            return None;
        };
        (!self.closed
            && self.t.fingerprint.matches(f).unwrap_or(false)
            && self.tail.matches(f).unwrap_or(false))
        .then_some(f)
    }

    /// Whether the file at the log's path, which this generation is read from, no longer holds
    /// what was read of it: it is shorter than the read offset, or has other first bytes or other
    /// bytes before that offset (truncated and written again, as `copytruncate` leaves it).
    pub fn rewritten(&self) -> bool {
        let Some(Source::Plain(f)) = self.source.as_ref() else {
            return false;
        };
        if self.closed || self.t.detached {
            return false;
        }
        let differs = |m: std::io::Result<bool>| m.is_ok_and(|same| !same);
        f.metadata().is_ok_and(|m| m.len() < self.read_off())
            || differs(self.t.fingerprint.matches(f))
            || differs(self.tail.matches(f))
    }

    /// What is known of this generation's content, to recognise a copy of it.
    pub fn candidate(&self) -> Candidate<'_> {
        // The fingerprint is a prefix too: a generation's first bytes never change.
        let fp = self.t.fingerprint;
        let mut prefixes = vec![
            self.t.stored(),
            Prefix {
                len: fp.len,
                crc: fp.crc,
            },
        ];
        prefixes.extend(self.t.ends.iter().copied());
        Candidate {
            fingerprint: self.t.fingerprint,
            prefixes,
            buffered: Some((self.base(), &self.buf[..])),
            intact: self.intact(),
            live: match self.source.as_ref() {
                Some(Source::Plain(f)) if !self.closed => Some(f),
                _ => None,
            },
            rewritten: self.rewritten(),
        }
    }

    /// Reads what was appended, up to a full chunk in the buffer and `budget` bytes.
    pub fn read_more(&mut self, chunk: usize, budget: u64) -> Read {
        let Some(source) = self.source.as_mut() else {
            return Read::Bytes(0);
        };
        let size = match source.content_len() {
            Ok(s) => s,
            Err(_) => return Read::Bytes(0),
        };
        if size < self.t.in_flight.unwrap_or(self.t.shipped) + self.buf.len() as u64 {
            return Read::Truncated { size };
        }
        let kept = self.buf.len();
        let mut total = 0u64;
        loop {
            let offset = self.t.in_flight.unwrap_or(self.t.shipped) + self.buf.len() as u64;
            if offset >= size || self.buf.len() >= chunk || total >= budget {
                break;
            }
            let want = ((size - offset) as usize)
                .min(READ_BLOCK)
                .min(chunk - self.buf.len());
            let start = self.buf.len();
            self.buf.resize(start + want, 0);
            let n = match source.read_at(&mut self.buf[start..], offset) {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(log = %self.t.logical, error = %e, "cannot read log file");
                    0
                }
            };
            self.buf.truncate(start + n);
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        if total == 0 {
            self.eof_since.get_or_insert_with(Instant::now);
            self.t.seen_size = self.t.seen_size.max(size);
            return Read::Bytes(0);
        }
        self.eof_since = None;
        if let Source::Plain(file) = &*source {
            // Truncated and written again past our offset since the last read: what was just read
            // belongs to the new generation, not to the end of ours.
            let same = self.t.fingerprint.matches(file).unwrap_or(true)
                && self.tail.matches(file).unwrap_or(true);
            if !same {
                self.buf.truncate(kept);
                if self.buf.is_empty() {
                    self.buf_since = None;
                }
                return Read::Truncated { size };
            }
            let end = self.t.in_flight.unwrap_or(self.t.shipped) + self.buf.len() as u64;
            let fresh = &self.buf[kept..];
            self.tail = if fresh.len() as u64 >= FINGERPRINT_BYTES || end <= fresh.len() as u64 {
                Window::of_bytes(end, fresh)
            } else {
                Window::take(file, end).unwrap_or(self.tail)
            };
            // Refresh a short fingerprint as the file grows, so it filters well.
            if self.t.fingerprint.is_partial() && self.t.shipped == 0 && self.t.in_flight.is_none()
            {
                if let Ok(fp) = Fingerprint::take(file) {
                    self.t.fingerprint = fp;
                }
            }
        }
        // Only now is the size known to be this generation's (a loss after a crash is counted
        // against it).
        self.t.seen_size = self.t.seen_size.max(size);
        self.buf_since.get_or_insert_with(Instant::now);
        Read::Bytes(total)
    }

    /// Cuts the next chunk (at most `chunk` bytes) off the buffer.
    pub fn cut(&mut self, chunk: usize) -> Option<Cut> {
        let len = self.buf.len().min(chunk);
        if len == 0 {
            return None;
        }
        let raw = self.buf.split_to(len).freeze();
        if self.buf.is_empty() {
            self.buf_since = None;
        }
        let end = self.t.shipped + len as u64;
        Some(Cut {
            prefix: self.t.stored().then(&raw),
            tail: Window::of_bytes(end, &raw),
            end,
            raw,
        })
    }

    /// Records that the pending chunk is stored.
    pub fn complete(&mut self) {
        let Some(p) = self.pending.take() else { return };
        self.t.shipped = p.end;
        self.t.crc = p.prefix.crc;
        self.t.tail = p.tail;
        self.t.in_flight = None;
        self.t.ends.push(p.prefix);
        if self.t.ends.len() > ENDS_KEPT {
            self.t.ends.remove(0);
        }
    }

    /// The record kept once this generation is no longer read.
    pub fn into_held(self, gone: bool) -> Held {
        let seen = self
            .source
            .as_ref()
            .and_then(|s| s.file().metadata().ok())
            .map(|m| m.len())
            .unwrap_or(0);
        let tail = match self.source.as_ref() {
            Some(s @ Source::Gzip { .. }) => Window::take(s.file(), seen).unwrap_or_default(),
            _ => self.t.tail,
        };
        Held {
            logical: self.t.logical,
            generation: self.t.generation,
            path: self.t.path,
            id: self.t.id,
            fingerprint: self.t.fingerprint,
            held: Prefix {
                len: self.t.shipped,
                crc: self.t.crc,
            },
            tail,
            ends: self.t.ends,
            copy: false,
            gzip: self.t.gzip,
            seen,
            gone,
        }
    }
}
