//! A followed file truncated and written again under the shipper (`copytruncate`): where the rest
//! of its generation is, and which generations were written and rotated away in between.
//!
//! The shipper sees a truncation in three ways. Reading finds the file shorter than what was read,
//! or other bytes before the read offset ([`follow`](crate::ship::follow)); the rest of the
//! generation is then in the copy beside it that holds those bytes
//! ([`find_continuation`](recognize::find_continuation)). But when every generation starts with
//! the same banner and only the banner was read, the file looks unchanged; then the copies tell.
//! A copy holds what its file held when it was made, and a file only grows, so a copy the file no
//! longer holds (it arrived holding more than was read,
//! [`Before`](recognize::Verdict::Before); or it was recorded earlier, holding more than was read,
//! and the file now has other bytes where the copy ends) proves the file was truncated after the
//! copy was made. So does a copy that holds no known generation at all, at a rotated name of a log
//! whose file no longer holds what was read of it ([`Later`](recognize::Verdict::Later)): a
//! generation written and rotated away while the shipper did not look.
//! Several such copies (rotated twice before the shipper looked again) are ordered by their
//! modification times, which `copytruncate` sets when it writes the copy and `compress` keeps.
//! The rest of the generation is in the copy recorded earlier as holding more of it (seen while
//! the file still held it), else in the oldest copy that holds what is stored of it, else in the
//! copy beside the file that holds its last bytes read; every other copy holds a generation of
//! the log nobody read under its name, stored as one now, in order, before the file's own new
//! generation. Copies that agree on every byte both hold (a copy and the gzip `compress` is
//! making of it) are one generation under several names.

use std::fs::File;
use std::path::PathBuf;
use std::time::SystemTime;

use super::{head_fingerprint, LogShipper};
use crate::ship::checkpoint::{Held, Tracked};
use crate::ship::follow::Active;
use crate::ship::identity::{FileId, Fingerprint, Window};
use crate::ship::recognize;
use crate::ship::source::{self, Source};

/// A new file at a rotated name of a followed generation's log that holds every byte read of it
/// and more, which the generation's own file no longer holds (see
/// [`Recognized::Before`](recognize::Verdict::Before)). Settled once every new file of a scan was
/// looked at.
pub(super) struct Before {
    /// The followed generation: its log name and number.
    pub of: (String, u64),
    pub path: PathBuf,
    /// The name the file is matched under.
    pub logical: String,
    pub id: FileId,
    pub file: File,
    pub gzip: bool,
    /// Its modification time: when it was copied.
    pub made: SystemTime,
    /// It holds every byte stored of the generation (and maybe its rest); else it holds a later
    /// generation ([`Later`](recognize::Verdict::Later)).
    pub holds_stored: bool,
}

/// The names a file found under `logical` (inode `id`) and the files that agree with it are
/// matched under.
fn names(logical: String, id: FileId, also: Vec<Before>) -> Vec<(String, FileId)> {
    std::iter::once((logical, id))
        .chain(also.into_iter().map(|a| (a.logical, a.id)))
        .collect()
}

/// Whether `h` records a copy (still in sight) of generation `a` that holds more of it than is
/// stored.
fn ahead_of(h: &Held, a: &Active) -> bool {
    h.copy
        && !h.gone
        && h.logical == a.t.logical
        && h.generation == a.t.generation
        && h.held.len > a.base().len
}

/// A file that holds a generation (or the rest of one) and is read from its first byte or from
/// where the generation stands. Invariant: `source` reads `path`, whose inode is `id`.
struct Copy {
    source: Source,
    path: PathBuf,
    id: FileId,
}

impl LogShipper {
    /// Settles the files found by this scan to hold more than was read of a followed generation,
    /// or a later generation of its log. Returns whether anything changed.
    pub(super) fn settle_before(&mut self) -> bool {
        let mut found = std::mem::take(&mut self.before);
        found.sort_by_key(|b| b.made);
        let mut changed = false;
        while let Some(of) = found.first().map(|b| b.of.clone()) {
            let (these, rest): (Vec<Before>, Vec<Before>) =
                found.into_iter().partition(|b| b.of == of);
            found = rest;
            let Some(i) = self.followed(&of) else {
                continue;
            };
            // Files that agree on every byte both hold are one generation under several names
            // (a copy and its gzip, both there while logrotate compresses). Oldest first.
            let mut generations: Vec<(Before, Vec<Before>)> = Vec::new();
            for b in these {
                let same = generations.iter_mut().find(|(g, _)| {
                    source::agree((&g.file, g.gzip), (&b.file, b.gzip)).unwrap_or(false)
                });
                match same {
                    Some((_, also)) => also.push(b),
                    None => generations.push((b, Vec::new())),
                }
            }
            let ids: Vec<FileId> = generations
                .iter()
                .flat_map(|(b, also)| std::iter::once(b.id).chain(also.iter().map(|a| a.id)))
                .collect();
            // The rest of the generation is in the copy seen while the log still held it, made
            // before any copy found now; else in the oldest copy found now that holds what is
            // stored of it; else in the copy beside the log that holds its last bytes read.
            // Every other copy found now holds a later generation.
            let mut rest = self.copy_ahead(i);
            if rest.is_none() {
                if let Some(k) = generations.iter().position(|(b, _)| b.holds_stored) {
                    let (b, also) = generations.remove(k);
                    for (name, id) in names(b.logical, b.id, also) {
                        self.name(&name, id, of.clone());
                    }
                    rest = Source::of(b.file, b.gzip).map(|source| Copy {
                        source,
                        path: b.path,
                        id: b.id,
                    });
                }
            }
            if rest.is_none() {
                rest = self.continuation(i).filter(|c| !ids.contains(&c.id));
            }
            let mut missed = Vec::new();
            for (b, also) in generations {
                let Some(source) = Source::of(b.file, b.gzip) else {
                    continue;
                };
                let copy = Copy {
                    source,
                    path: b.path,
                    id: b.id,
                };
                missed.push((copy, names(b.logical, b.id, also)));
            }
            self.split(i, rest, missed, true);
            changed = true;
        }
        changed
    }

    /// Opens a copy recorded as holding more of followed generation `i` than is stored (seen
    /// while the log still held it), if one is still there and still holds it (a record may name
    /// an inode number the filesystem has given to another file since).
    fn copy_ahead(&self, i: usize) -> Option<Copy> {
        let a = &self.active[i];
        self.cp
            .held
            .iter()
            .filter(|h| ahead_of(h, a))
            .find_map(|h| {
                let file = crate::ship::discover::open_read(&h.path, false)
                    .ok()
                    .filter(|f| f.metadata().is_ok_and(|m| FileId::of(&m) == h.id))
                    .filter(|f| h.still_holds(f))?;
                Some(Copy {
                    source: Source::of(file, h.gzip)?,
                    path: h.path.clone(),
                    id: h.id,
                })
            })
    }

    /// Looks, for every followed generation, at the copies recorded as holding more of it than
    /// was read: one whose last bytes its file no longer holds where the copy ends proves the file
    /// was truncated and written again since. Returns whether anything changed.
    pub(super) fn rewritten_behind_copies(&mut self) -> bool {
        let mut found = None;
        'files: for (i, a) in self.active.iter().enumerate() {
            let Some(Source::Plain(live)) = a.source.as_ref() else {
                continue;
            };
            if a.closed {
                continue;
            }
            for h in self.cp.held.iter().filter(|h| !h.gzip && ahead_of(h, a)) {
                // Asked only for a copy ahead of what is stored: no stat on a pass without one.
                let len = live.metadata().map(|m| m.len()).unwrap_or(0);
                if len < h.held.len || !h.tail.matches(live).unwrap_or(true) {
                    found = Some(i);
                    break 'files;
                }
            }
        }
        let Some(i) = found else {
            return false;
        };
        let Some(copy) = self.copy_ahead(i) else {
            // Gone meanwhile: the next scan marks it.
            return false;
        };
        self.split(i, Some(copy), Vec::new(), true);
        true
    }

    /// The copy beside generation `i`'s file that holds its last bytes read, if any.
    fn continuation(&self, i: usize) -> Option<Copy> {
        let a = &self.active[i];
        recognize::find_continuation(&a.t.path, a.t.fingerprint, a.tail, Some(a.t.id))
            .map(|(source, path, id)| Copy { source, path, id })
    }

    /// File `i` was truncated in place (copytruncate): it shrank below what we read, or the bytes
    /// before our offset changed.
    pub(super) fn truncated(&mut self, i: usize) {
        // The copy made just before the truncation starts with the same bytes: finish the old
        // generation from it, so nothing written before the truncation is lost.
        let copy = self.continuation(i);
        self.split(i, copy, Vec::new(), false);
    }

    /// Generation `i`'s file now holds a later generation: `rest` holds the rest of generation
    /// `i`, `missed` (oldest first) generations of the same log nobody read, each with the names
    /// it is matched under and the files found there; the file itself is followed as the newest.
    /// With `reread`, what was read of generation `i` and not stored is read again from `rest`
    /// (it may have been read from the file after it was rewritten).
    fn split(
        &mut self,
        i: usize,
        rest: Option<Copy>,
        missed: Vec<(Copy, Vec<(String, FileId)>)>,
        reread: bool,
    ) {
        if reread && rest.is_some() {
            let a = &mut self.active[i];
            a.buf.clear();
            a.buf_since = None;
            a.tail = a.pending.as_ref().map_or(a.t.tail, |p| p.tail);
        }
        let read = self.active[i].read_off();
        let old = &self.active[i].t;
        let now = self.active[i]
            .source
            .as_ref()
            .and_then(|s| s.content_len().ok())
            .unwrap_or(0);
        tracing::info!(log = %old.logical, generation = old.generation, read, now,
            "log file was truncated (copytruncate); starting a new generation");
        let (logical, path, id, detached) =
            (old.logical.clone(), old.path.clone(), old.id, old.detached);
        let source_for_new = self.active[i].source.take();
        let a = &mut self.active[i];
        match rest {
            Some(copy) => {
                tracing::info!(copy = %copy.path.display(), "reading the rest of the old generation from its copy");
                a.t.gzip = copy.source.is_gzip();
                if a.t.gzip {
                    a.tail = Window::default();
                }
                a.source = Some(copy.source);
                // What was seen of the truncated file may be the next generation's.
                a.t.seen_size = read;
                a.t.path = copy.path;
                a.t.id = copy.id;
                a.t.detached = true;
                // The copy has not been read yet: an end-of-file seen on the truncated file must
                // not retire this generation before its rest is read from the copy.
                a.eof_since = None;
                self.cp.held.retain(|h| h.gone || h.id != copy.id);
            }
            None => {
                tracing::warn!(log = %logical,
                    "no copy of the truncated file was found beside it; bytes written between the last read and the truncation may be lost");
                a.closed = true;
            }
        }
        for (copy, names) in missed {
            self.follow_missed(&logical, copy, names);
        }
        let Some(Source::Plain(file)) = source_for_new else {
            return;
        };
        if detached {
            // A rotated file rewritten under its new name is a file of its own there: the next
            // pass finds it as new.
            self.cp.names.retain(|_, o| o.id != id);
            return;
        }
        self.start(path, logical, id, file, now);
    }

    /// Follows `copy`, a generation of `log` that was written and rotated away between two looks,
    /// as the next generation of `log`, and records that each of `names` (with the file found
    /// there) holds it.
    fn follow_missed(&mut self, log: &str, copy: Copy, names: Vec<(String, FileId)>) {
        let generation = self.cp.next_generation(log);
        tracing::info!(log, generation, path = %copy.path.display(),
            "a rotated copy holds a generation never read under the log's name; shipping it as that generation");
        let fingerprint = match &copy.source {
            Source::Plain(f) => Fingerprint::take(f).ok(),
            s => head_fingerprint(s.file()),
        };
        let seen_size = copy.source.content_len().unwrap_or(0);
        let gzip = copy.source.is_gzip();
        let t = Tracked {
            logical: log.to_string(),
            generation,
            path: copy.path,
            id: copy.id,
            fingerprint: fingerprint.unwrap_or(Fingerprint { len: 0, crc: 0 }),
            shipped: 0,
            in_flight: None,
            seen_size,
            detached: true,
            crc: 0,
            tail: Window::default(),
            ends: Vec::new(),
            gzip,
        };
        self.active.push(Active::following(t, copy.source));
        for (name, id) in names {
            self.name(&name, id, (log.to_string(), generation));
        }
    }

    /// The followed (not closed) generation `of`.
    fn followed(&self, of: &(String, u64)) -> Option<usize> {
        self.active
            .iter()
            .position(|a| !a.closed && a.t.logical == of.0 && a.t.generation == of.1)
    }
}
