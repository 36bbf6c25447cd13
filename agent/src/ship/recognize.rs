//! Whether a file that just appeared holds bytes that are already stored, and whose.
//!
//! Rotation makes the same bytes show up under new names: a rename keeps the inode (the shipper
//! knows it), but `copytruncate` makes a copy and `compress` a gzip, both new inodes. A new file
//! *holds* a followed generation when its content (decompressed for a gzip) starts with that
//! generation's bytes, or is a prefix of them. The fingerprint of the first KiB only picks the
//! candidates; the decision is made on the CRC32C of as many bytes as are known of the candidate
//! (or, when the candidate's own file is still intact, of the bytes it holds), so generations
//! that share a banner longer than the fingerprint are still told apart.
//!
//! A copy can also prove that the file it was made from was truncated and written again since:
//! files only grow, so a copy of a followed file that holds everything stored of its generation
//! and more, but is not a prefix of that file any more, was made before the file was rewritten
//! ([`Verdict::Before`]). This is what tells generations apart when each starts with the same
//! banner and only the banner was read: the file keeps its first bytes and the bytes before the
//! read offset, and only the copies differ. It is asked only where rotation puts copies of that
//! log, and only for generations followed before the file appeared. A copy there that holds no
//! known generation, while the log's file no longer holds what was read of it, is a generation
//! of that log written and rotated away between two looks ([`Verdict::Later`]), not a file of
//! its own.
//!
//! Ambiguity is resolved towards storing bytes: a plain file that is only a short prefix of a
//! candidate (no more than [`FINGERPRINT_BYTES`], e.g. a new log holding only its banner so far)
//! is [`Verdict::Unsure`] until it stops growing, then a file of its own; a file longer than
//! everything known of a candidate is taken for its continuation only when the candidate's own
//! file no longer holds it (truncated or gone). The shipper asks only about files at paths where
//! copies appear, never where files are first seen.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::discover::open_read;
use super::identity::{
    read_full, scan_prefixes, FileAt, FileId, Fingerprint, Prefix, Scanned, Window,
    FINGERPRINT_BYTES,
};
use super::source::{self, Source};

/// What is known of the content of one stored generation (or of a file holding part of it).
pub struct Candidate<'a> {
    pub fingerprint: Fingerprint,
    /// Prefixes whose CRC is known.
    pub prefixes: Vec<Prefix>,
    /// Bytes known in memory right after a prefix (read, not yet stored).
    pub buffered: Option<(Prefix, &'a [u8])>,
    /// A plain file whose content is the candidate's, checked intact by the caller.
    pub intact: Option<&'a File>,
    /// The plain file the candidate is being read from, whatever it holds now (it may have been
    /// truncated and written again since it was read). `None` for a candidate no longer read.
    pub live: Option<&'a File>,
    /// `live` no longer holds what was read of the candidate (it was truncated, and maybe
    /// written again): a copy it does not hold either, which holds no known generation, is one
    /// written and rotated away since ([`Verdict::Later`]).
    pub rewritten: bool,
}

impl Candidate<'_> {
    /// The CRC of the first `len` bytes, when known without reading.
    fn crc_at(&self, len: u64) -> Option<u32> {
        if let Some(p) = self.prefixes.iter().find(|p| p.len == len) {
            return Some(p.crc);
        }
        let (p, bytes) = self.buffered?;
        (len >= p.len && len - p.len <= bytes.len() as u64)
            .then(|| p.then(&bytes[..(len - p.len) as usize]).crc)
    }

    /// The lengths at which the CRC is known without reading.
    fn known_lengths(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.prefixes.iter().map(|p| p.len).collect();
        if let Some((p, bytes)) = self.buffered {
            v.push(p.len);
            v.push(p.len + bytes.len() as u64);
        }
        v
    }
}

/// What a new file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It holds candidate `index`'s bytes: its first `held.len` bytes are the candidate's. With
    /// `extends` it has more than is known of them (the rest of a generation whose own file lost
    /// it).
    Holds {
        index: usize,
        held: Prefix,
        extends: bool,
    },
    /// Nothing known: a file of its own.
    Unknown,
    /// Its bytes so far are a short prefix of a candidate: ask again once it stops growing, and
    /// take it for a file of its own if it still is.
    Unsure,
    /// A gzip file that does not decompress to its end yet (being written): ask again later.
    Unfinished,
    /// A candidate's own file was truncated while it was compared (`copytruncate` right after the
    /// copy was made): ask again at the next pass, once the shipper has seen the truncation.
    Again,
    /// It holds every byte stored of candidate `index` and more, which the file the candidate is
    /// read from no longer holds: a copy made before that file was truncated and written again
    /// (files only grow, so a copy of the same generation would be a prefix of it). It holds
    /// the rest of the candidate's generation (from where it is stored: bytes read since may be
    /// the later generation's), or a later generation that was never read.
    Before { index: usize },
    /// It holds no known generation, and candidate `index`'s own file, truncated since it was
    /// read, does not hold it either: a generation of the candidate's log written and rotated
    /// away between two looks, which nobody read.
    Later { index: usize },
}

/// Tells whether `file` (a gzip when `gzip`) holds one of `candidates`. Only asked for a file at a
/// path where copies appear (never where files are first seen).
pub fn recognize(file: &File, gzip: bool, candidates: &[Candidate]) -> io::Result<Verdict> {
    let plain_len = if gzip {
        None
    } else {
        Some(file.metadata()?.len())
    };
    let mut head = vec![0u8; FINGERPRINT_BYTES as usize];
    let head_len = read_full(&mut *source::content(file, gzip)?, &mut head).unwrap_or(0);
    head.truncate(head_len);
    let short = (head_len as u64) < FINGERPRINT_BYTES;
    let alive: Vec<usize> = candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| {
            let fp = c.fingerprint;
            // Nothing read of it yet: only its own file can tell.
            (fp.len > 0 || c.intact.is_some())
                && if head.len() as u64 >= fp.len {
                    fp.matches_head(&head)
                } else {
                    // Shorter than the candidate's fingerprint: maybe a prefix of it.
                    short
                }
        })
        .map(|(i, _)| i)
        .collect();
    let later = candidates
        .iter()
        .enumerate()
        .find_map(|(i, c)| c.live.filter(|_| c.rewritten).map(|live| (i, live)));
    if alive.is_empty() && later.is_none() {
        return Ok(if gzip && broken_gzip(file)? {
            Verdict::Unfinished
        } else {
            Verdict::Unknown
        });
    }
    let mut offsets = Vec::new();
    if let Some((_, live)) = later {
        offsets.push(live.metadata()?.len());
    }
    for &i in &alive {
        let c = &candidates[i];
        offsets.extend(c.known_lengths());
        for f in c.intact.iter().chain(c.live.iter()) {
            offsets.push(f.metadata()?.len());
        }
    }
    if let Some(len) = plain_len {
        offsets.push(len);
    }
    let scanned = scan_prefixes(&mut *source::content(file, gzip)?, &offsets);
    // A file that holds a known generation's bytes is that generation's; only one that holds
    // none can be a copy made before a followed file was rewritten. Where several hold, the one
    // most of whose bytes were compared wins: generations that share a banner all "hold" a file
    // as far as only their banner is known.
    let (mut unsure, mut again, mut before) = (false, false, None);
    let mut best: Option<(usize, Prefix, bool)> = None;
    let rank = |held: Prefix, extends: bool| (held.len, !extends);
    for &i in &alive {
        match judge(&candidates[i], &scanned, gzip)? {
            Judged::Yes { held, extends } => {
                if best.is_none_or(|(_, h, e)| rank(held, extends) > rank(h, e)) {
                    best = Some((i, held, extends));
                }
            }
            Judged::Before => before = before.or(Some(i)),
            Judged::Unsure => unsure = true,
            Judged::Again => again = true,
            Judged::No => {}
        }
    }
    Ok(if let Some((index, held, extends)) = best {
        Verdict::Holds {
            index,
            held,
            extends,
        }
    } else if again {
        Verdict::Again
    } else if let Some(index) = before {
        Verdict::Before { index }
    } else if gzip && scanned.broken {
        Verdict::Unfinished
    } else if let Some((index, live)) = later {
        // A copy of what the log holds now (the generation after the candidate, not followed
        // yet): asked again once reading has seen the truncation.
        if holds(live, &scanned)? {
            Verdict::Again
        } else if gzip && broken_gzip(file)? {
            Verdict::Unfinished
        } else {
            Verdict::Later { index }
        }
    } else if unsure {
        Verdict::Unsure
    } else {
        Verdict::Unknown
    })
}

/// How one candidate compares.
enum Judged {
    No,
    /// Holds the candidate's bytes and, when `extends`, more.
    Yes {
        held: Prefix,
        extends: bool,
    },
    /// A short prefix of the candidate: a copy being written, or a new file with the same first
    /// bytes; only time tells.
    Unsure,
    /// The candidate's own file was truncated while it was compared.
    Again,
    /// Holds all that is stored of the candidate and more, which its file no longer holds.
    Before,
}

/// Whether the file scanned holds candidate `c`.
fn judge(c: &Candidate, x: &Scanned, gzip: bool) -> io::Result<Judged> {
    // The file's length, or (when it goes on past every offset) more than anything compared.
    let x_len = x.end.map(|e| e.len);
    let intact_len = match c.intact {
        Some(f) => Some(f.metadata()?.len()),
        None => None,
    };
    let known = c
        .known_lengths()
        .into_iter()
        .chain(intact_len)
        .max()
        .unwrap_or(0);
    let fits = |len: u64| x_len.is_none_or(|n| len <= n);
    // Files only grow: the candidate's own file, now shorter than it was when this began or than
    // what was read of it, was truncated meanwhile, and comparing with it tells nothing. A copy
    // made just before (copytruncate) is judged again once the shipper has seen the truncation.
    let no_or_again = || -> io::Result<Judged> {
        let Some(f) = c.intact else {
            return Ok(Judged::No);
        };
        let now = f.metadata()?.len();
        let read = c.known_lengths().into_iter().max().unwrap_or(0);
        Ok(if now < intact_len.unwrap_or(0) || now < read {
            Judged::Again
        } else {
            Judged::No
        })
    };
    // Everything stored of it and more, which its file no longer holds: a copy made before that
    // file was truncated and written again. (The bytes read and not stored yet may be the later
    // generation's, read from the rewritten file; the copy holds the generation's own.)
    if let (Some(live), Some((base, _))) = (c.live, c.buffered) {
        let holds_stored = (c.prefixes.iter().filter(|p| p.len <= base.len))
            .chain([&base])
            .all(|p| x.prefix(p.len).is_some_and(|t| t.crc == p.crc));
        let more = x_len.is_none_or(|n| n > base.len);
        if holds_stored && more && !x.broken && !holds(live, x)? {
            return Ok(Judged::Before);
        }
    }
    // Compare at every length known on both sides; one difference settles it.
    let mut verified = 0u64;
    for len in c.known_lengths().into_iter().filter(|&l| fits(l)) {
        let (Some(ours), Some(theirs)) = (c.crc_at(len), x.prefix(len)) else {
            continue;
        };
        if ours == theirs.crc {
            verified = verified.max(len);
        } else {
            return Ok(Judged::No);
        }
    }
    // A file no longer than the candidate: compare all of it, reading the candidate's file if
    // what is known in memory stops short.
    if let Some(n) = x_len.filter(|&n| n <= known) {
        if verified < n {
            if let (Some(ours), Some(f)) = (c.crc_at(n), x.end) {
                if ours != f.crc {
                    return Ok(Judged::No);
                }
                verified = n;
            } else if let (Some(file), Some(f)) = (c.intact, x.end) {
                let theirs = scan_prefixes(&mut FileAt { file, pos: 0 }, &[n]);
                match theirs.prefix(n) {
                    Some(p) if p.crc == f.crc => verified = n,
                    _ => return no_or_again(),
                }
            }
        }
    } else if c.intact.is_some() {
        // Longer than the candidate's own file, which is intact: not a copy of it (copies are
        // made from it, so they are never longer), unless it was truncated meanwhile.
        return no_or_again();
    }
    if verified == 0 {
        return Ok(Judged::No);
    }
    let ambiguous = verified <= FINGERPRINT_BYTES;
    let verified_prefix = x.prefix(verified).unwrap_or_default();
    let yes = |extends| Judged::Yes {
        held: verified_prefix,
        extends,
    };
    Ok(match x_len {
        // Entirely the candidate's bytes.
        Some(n) if verified == n && n == known => yes(false),
        Some(n) if verified == n && (gzip || !ambiguous) => yes(false),
        Some(n) if verified == n => Judged::Unsure,
        // Some bytes past the last prefix known on both sides are unverified.
        Some(n) if n <= known && !ambiguous => yes(false),
        Some(n) if n <= known => Judged::No,
        // More than is known: the rest of a generation whose own file lost it.
        _ if verified == known => yes(true),
        _ => Judged::No,
    })
}

/// Whether `live` starts with all of the scanned stream (which must have been scanned to its end,
/// else it is longer than every offset compared, `live`'s length among them).
fn holds(live: &File, x: &Scanned) -> io::Result<bool> {
    let Some(end) = x.end else {
        return Ok(false);
    };
    if live.metadata()?.len() < end.len {
        return Ok(false);
    }
    let theirs = scan_prefixes(&mut FileAt { file: live, pos: 0 }, &[end.len]);
    Ok(theirs.prefix(end.len) == Some(end))
}

/// Whether a gzip file stops before its end (being written, or damaged).
fn broken_gzip(file: &File) -> io::Result<bool> {
    let mut stream = source::content(file, true)?;
    Ok(io::copy(&mut stream, &mut io::sink()).is_err())
}

/// A file beside a generation's last path that holds its bytes up to `window.end` (and maybe
/// more): where to read the rest of a file that was truncated (`copytruncate`) or replaced by its
/// gzip (`compress`) before all of it was read. A file holds them when it starts with the
/// generation's first bytes and has, before `window.end`, the bytes read there last: two KiB
/// compared, however long the file (a gzip is decompressed up to there). The newest such file
/// wins; `not` is never taken.
pub fn find_continuation(
    path: &Path,
    fingerprint: Fingerprint,
    window: Window,
    not: Option<FileId>,
) -> Option<(Source, PathBuf, FileId)> {
    let dir = path.parent()?;
    let mut best: Option<(Source, PathBuf, FileId, SystemTime)> = None;
    for entry in fs::read_dir(dir).ok()?.flatten() {
        if !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let p = entry.path();
        let Ok(file) = open_read(&p, false) else {
            continue;
        };
        let Ok(meta) = file.metadata() else { continue };
        let id = FileId::of(&meta);
        let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        if Some(id) == not || !meta.is_file() || best.as_ref().is_some_and(|b| b.3 >= mtime) {
            continue;
        }
        let gzip = source::is_gzip(&p, &file);
        let holds = if gzip {
            holds_through(&file, fingerprint, window)
        } else {
            meta.len() >= window.end
                && fingerprint.matches(&file).unwrap_or(false)
                && window.matches(&file).unwrap_or(false)
        };
        if !holds {
            continue;
        }
        let Some(source) = Source::of(file, gzip) else {
            continue;
        };
        best = Some((source, p, id, mtime));
    }
    best.map(|(s, p, id, _)| (s, p, id))
}

/// Whether a gzip file's content starts with `fingerprint`'s bytes and has `window`'s bytes.
fn holds_through(file: &File, fingerprint: Fingerprint, window: Window) -> bool {
    let Ok(mut stream) = source::content(file, true) else {
        return false;
    };
    let mut head = vec![0u8; fingerprint.len as usize];
    if read_full(&mut *stream, &mut head).ok() != Some(head.len())
        || !fingerprint.matches_head(&head)
    {
        return false;
    }
    // The window's bytes `[start, end)`: some may be in the head already, the rest further on.
    let (start, have) = (window.end - window.len, head.len() as u64);
    let mut bytes = Vec::with_capacity(window.len as usize);
    if start < have {
        bytes.extend_from_slice(&head[start as usize..have.min(window.end) as usize]);
    } else if io::copy(&mut (&mut *stream).take(start - have), &mut io::sink()).ok()
        != Some(start - have)
    {
        return false;
    }
    let mut rest = vec![0u8; (window.len as usize) - bytes.len()];
    if read_full(&mut *stream, &mut rest).ok() != Some(rest.len()) {
        return false;
    }
    bytes.extend_from_slice(&rest);
    crc32c::crc32c(&bytes) == window.crc
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    fn lines(tag: &str, n: usize) -> Vec<u8> {
        let mut out = vec![b'#'; 3000]; // a banner longer than the fingerprint
        out.push(b'\n');
        for i in 0..n {
            writeln!(out, "{tag} line {i}").unwrap();
        }
        out
    }

    fn whole(data: &[u8]) -> Candidate<'static> {
        Candidate {
            fingerprint: Fingerprint::of(data),
            prefixes: vec![Prefix::default().then(data)],
            buffered: None,
            intact: None,
            live: None,
            rewritten: false,
        }
    }

    #[test]
    fn a_gzip_or_copy_of_a_generation_is_told_from_another_with_the_same_banner() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (lines("a", 500), lines("b", 500));
        let cands = [whole(&a), whole(&b)];
        let p = dir.path().join("app.log.1.gz");
        std::fs::write(&p, gz(&b)).unwrap();
        let f = File::open(&p).unwrap();
        assert_eq!(
            recognize(&f, true, &cands).unwrap(),
            Verdict::Holds {
                index: 1,
                held: Prefix::default().then(&b),
                extends: false
            }
        );
        let p = dir.path().join("app.log.1");
        std::fs::write(&p, &a).unwrap();
        assert_eq!(
            recognize(&File::open(&p).unwrap(), false, &cands).unwrap(),
            Verdict::Holds {
                index: 0,
                held: Prefix::default().then(&a),
                extends: false
            }
        );
        let c = lines("c", 500);
        std::fs::write(&p, &c).unwrap();
        assert_eq!(
            recognize(&File::open(&p).unwrap(), false, &cands).unwrap(),
            Verdict::Unknown,
            "same banner, other lines"
        );
        // A gzip still being written is asked about again later.
        let p = dir.path().join("other.gz");
        let full = gz(&c);
        std::fs::write(&p, &full[..full.len() / 2]).unwrap();
        assert_eq!(
            recognize(&File::open(&p).unwrap(), true, &cands).unwrap(),
            Verdict::Unfinished
        );
    }

    #[test]
    fn of_two_generations_sharing_a_banner_the_one_compared_furthest_holds_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (lines("a", 500), lines("b", 500));
        // Only the first KiB of `a` is known (its file was truncated since); all of `b` is.
        let only_banner = Candidate {
            fingerprint: Fingerprint::of(&a),
            prefixes: vec![Prefix::default().then(&a[..FINGERPRINT_BYTES as usize])],
            buffered: None,
            intact: None,
            live: None,
            rewritten: false,
        };
        let cands = [only_banner, whole(&b)];
        let p = dir.path().join("app.log.2.gz");
        std::fs::write(&p, gz(&b)).unwrap();
        assert_eq!(
            recognize(&File::open(&p).unwrap(), true, &cands).unwrap(),
            Verdict::Holds {
                index: 1,
                held: Prefix::default().then(&b),
                extends: false
            },
            "all of b's bytes, not a's banner and more"
        );
    }

    #[test]
    fn a_short_prefix_waits_and_a_longer_one_is_a_copy_being_written() {
        let dir = tempfile::tempdir().unwrap();
        let a = lines("a", 500);
        let old = dir.path().join("app.log.1");
        std::fs::write(&old, &a).unwrap();
        let old = File::open(&old).unwrap();
        let mut cand = whole(&a);
        cand.intact = Some(&old);
        let cands = [cand];
        let p = dir.path().join("app.log");
        std::fs::write(&p, &a[..800]).unwrap();
        assert_eq!(
            recognize(&File::open(&p).unwrap(), false, &cands).unwrap(),
            Verdict::Unsure,
            "a copy being written, or a new file with the same banner: time tells"
        );
        std::fs::write(&p, &a[..2500]).unwrap();
        assert_eq!(
            recognize(&File::open(&p).unwrap(), false, &cands).unwrap(),
            Verdict::Holds {
                index: 0,
                held: Prefix::default().then(&a[..2500]),
                extends: false
            },
            "more than a KiB of it where copies appear: taken for a copy being written"
        );
    }

    #[test]
    fn a_copy_whose_original_is_truncated_while_it_is_compared_is_asked_about_again() {
        let dir = tempfile::tempdir().unwrap();
        let a = lines("a", 5000);
        let log = dir.path().join("app.log");
        std::fs::write(&log, &a).unwrap();
        let orig = File::open(&log).unwrap();
        // The shipper has stored 8 KiB of the log and holds 8 KiB more in memory; the log is
        // intact when the candidate is made.
        let stored = Prefix::default().then(&a[..8192]);
        let cand = Candidate {
            fingerprint: Fingerprint::of(&a),
            prefixes: vec![stored],
            buffered: Some((stored, &a[8192..16384])),
            intact: Some(&orig),
            live: None,
            rewritten: false,
        };
        // copytruncate: the whole log copied, then the log truncated, before the copy is judged.
        let copy = dir.path().join("app.log.1");
        std::fs::write(&copy, &a).unwrap();
        let cands = [cand];
        let other = dir.path().join("other.log");
        let mut longer = a.clone();
        longer.extend_from_slice(b"more than the log ever held\n");
        std::fs::write(&other, &longer).unwrap();
        assert_eq!(
            recognize(&File::open(&other).unwrap(), false, &cands).unwrap(),
            Verdict::Unknown,
            "longer than the intact log: not a copy of it"
        );
        std::fs::write(&log, b"").unwrap(); // truncated in place, same inode
        assert_eq!(
            recognize(&File::open(&copy).unwrap(), false, &cands).unwrap(),
            Verdict::Again,
            "the copy is not a file of its own: asked about again once the truncation is seen"
        );
    }

    #[test]
    fn the_rest_of_a_truncated_generation_is_found_in_its_copy_or_gzip() {
        let dir = tempfile::tempdir().unwrap();
        let a = lines("a", 2000);
        let log = dir.path().join("app.log");
        std::fs::write(&log, b"new generation\n").unwrap();
        std::fs::write(dir.path().join("app.log.2.gz"), gz(&lines("b", 2000))).unwrap();
        std::fs::write(dir.path().join("app.log.1.gz"), gz(&a)).unwrap();
        let window = Window::of_bytes(10_000, &a[..10_000]);
        let (mut src, path, _) =
            find_continuation(&log, Fingerprint::of(&a), window, None).unwrap();
        assert_eq!(path.file_name().unwrap(), "app.log.1.gz");
        let mut rest = vec![0u8; a.len() - 10_000];
        assert_eq!(src.read_at(&mut rest, 10_000).unwrap(), rest.len());
        assert_eq!(rest, a[10_000..]);
        // Nothing stored yet (an empty window), or a window within the first KiB.
        for end in [0, 700, 1500] {
            let window = Window::of_bytes(end as u64, &a[..end]);
            let found = find_continuation(&log, Fingerprint::of(&a), window, None);
            assert_eq!(
                found.unwrap().1.file_name().unwrap(),
                "app.log.1.gz",
                "{end}"
            );
        }
    }
}
