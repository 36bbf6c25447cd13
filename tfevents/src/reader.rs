//! The resumable, incremental TFRecord reader: applies the damage rules to a file that may still
//! be growing.
//!
//! * A record cut short at the end is "not yet": [`Next::Pending`], and the next call picks up at
//!   that same record once more bytes are there. Every record is yielded exactly once however the
//!   writer's flushes cut the file.
//! * A bad length CRC (or an absurd length) means the framing cannot be trusted:
//!   [`Next::Stopped`], for good.
//! * A bad data CRC with more bytes after the record: [`Next::Skipped`], counted, and reading goes
//!   on at the next record.
//! * A bad data CRC on the last record: [`Next::Pending`] while it is re-read from disk (a writer,
//!   or a network filesystem, may still be settling) until `tail_grace` has passed since it was
//!   first seen, then skipped. When the caller says the file is complete it is skipped right away.
//!
//! [`RecordReader::offset`] is always the offset of the next unread record, so a checkpoint can
//! store it and [`RecordReader::open`] can resume there. Records carry their own byte range, so a
//! mirror can cut a file at a record boundary. This module decodes nothing and never prints.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::framing::{self, Frame, FOOTER_LEN, HEADER_LEN};

/// How much to ask the OS for at a time: large enough that syscalls do not dominate.
const CHUNK: usize = 256 * 1024;
/// The most one read asks for, so a large declared length never allocates ahead of the bytes
/// that are really in the file.
const MAX_READ: usize = 16 << 20;

/// How long a bad-CRC last record is re-read before it is skipped, unless told otherwise.
pub const DEFAULT_TAIL_GRACE: Duration = Duration::from_secs(2);

/// What went wrong with one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DamageKind {
    /// The length's CRC does not match: the rest of the file cannot be framed.
    BadLengthCrc,
    /// The length's CRC matches but the length is beyond any real record.
    TooLarge { len: u64 },
    /// The data's CRC does not match; the record was skipped.
    BadDataCrc { len: u64 },
    /// The CRCs match but the data is not an `Event` message; the record was skipped.
    BadEvent,
}

/// Damage found at a byte offset of a file. Invariant: `offset` is the start of the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Damage {
    pub offset: u64,
    pub kind: DamageKind,
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            DamageKind::BadLengthCrc => write!(
                f,
                "record at byte {}: length checksum mismatch; the rest of the file cannot be read",
                self.offset
            ),
            DamageKind::TooLarge { len } => write!(
                f,
                "record at byte {}: length {len} is beyond any real record; the rest of the file \
                 cannot be read",
                self.offset
            ),
            DamageKind::BadDataCrc { len } => write!(
                f,
                "record at byte {} ({len} bytes): data checksum mismatch; record skipped",
                self.offset
            ),
            DamageKind::BadEvent => write!(
                f,
                "record at byte {}: not a valid Event message; record skipped",
                self.offset
            ),
        }
    }
}

impl Damage {
    /// True when reading cannot go on past this damage.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self.kind,
            DamageKind::BadLengthCrc | DamageKind::TooLarge { .. }
        )
    }
}

/// Damage counted over many records, so a caller can report a damaged file in one line instead of
/// one line per record. Invariant: `first` is set exactly when `count > 0`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DamageSummary {
    pub count: u64,
    /// The first damage counted (where it is, and what).
    pub first: Option<Damage>,
}

impl DamageSummary {
    /// Counts one damaged record.
    pub fn add(&mut self, damage: Damage) {
        self.count += 1;
        self.first.get_or_insert(damage);
    }

    /// True when nothing was counted.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Returns what was counted and starts counting afresh.
    pub fn take(&mut self) -> DamageSummary {
        std::mem::take(self)
    }
}

impl fmt::Display for DamageSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.count, self.first) {
            (_, None) => write!(f, "no damaged records"),
            (1, Some(first)) => write!(f, "1 damaged record: {first}"),
            (n, Some(first)) => write!(f, "{n} damaged records, the first: {first}"),
        }
    }
}

/// One good record and where it lies in the file: `offset..end` is the whole frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    pub offset: u64,
    pub end: u64,
    pub data: &'a [u8],
}

/// The reader's answer to "what next?".
#[derive(Debug, PartialEq, Eq)]
pub enum Next<'a> {
    Record(RecordRef<'a>),
    /// A damaged record was skipped; reading goes on.
    Skipped(Damage),
    /// Nothing more for now: the file ends here or inside a record. Ask again later.
    Pending,
    /// The framing is broken at this point; nothing more will be read from this file.
    Stopped(Damage),
}

/// A bad-CRC last record being given time to settle.
#[derive(Debug, Clone, Copy)]
struct Suspect {
    offset: u64,
    since: Instant,
}

/// Reads records from `R` starting at a record boundary.
///
/// Invariant: `frames` describes the bytes read from `source` so far (see [`Frames`]). Only
/// opening and seeking are generic over `R`: the per-record work is in [`Frames`], which is not,
/// so it is compiled once, in this crate and with its optimization settings, whatever the caller.
#[derive(Debug)]
pub struct RecordReader<R = File> {
    source: R,
    frames: Frames,
}

/// A byte source the reader can read and re-read.
trait Source: Read + Seek {}

impl<T: Read + Seek> Source for T {}

/// The reader's state apart from its source.
///
/// Invariants: `buf[start..]` are the bytes of the file from `offset()` on, as last read;
/// `base + buf.len()` is the source's read position; `stopped` once set never clears.
#[derive(Debug)]
struct Frames {
    buf: Vec<u8>,
    start: usize,
    base: u64,
    tail_grace: Duration,
    complete: bool,
    suspect: Option<Suspect>,
    stopped: Option<Damage>,
    skipped: u64,
}

impl RecordReader<File> {
    /// Opens `path` and positions the reader at `offset`, which must be a record boundary
    /// reported by [`RecordReader::offset`] or a record's `end` (0 for a new file).
    pub fn open(path: &Path, offset: u64) -> io::Result<Self> {
        Self::new(File::open(path)?, offset)
    }
}

impl<R: Read + Seek> RecordReader<R> {
    /// Wraps a source, starting at `offset`.
    pub fn new(mut source: R, offset: u64) -> io::Result<Self> {
        source.seek(SeekFrom::Start(offset))?;
        Ok(RecordReader {
            source,
            frames: Frames {
                buf: Vec::new(),
                start: 0,
                base: offset,
                tail_grace: DEFAULT_TAIL_GRACE,
                complete: false,
                suspect: None,
                stopped: None,
                skipped: 0,
            },
        })
    }

    /// Sets how long a bad-CRC last record is re-read before it is skipped.
    pub fn set_tail_grace(&mut self, grace: Duration) {
        self.frames.tail_grace = grace;
    }

    /// Declares that the file will not grow (its writer is gone): a bad-CRC last record is then
    /// skipped at once instead of re-read.
    pub fn set_complete(&mut self, complete: bool) {
        self.frames.complete = complete;
    }

    /// The offset of the next unread record: where to resume after a restart.
    pub fn offset(&self) -> u64 {
        self.frames.offset()
    }

    /// How many damaged records were skipped so far.
    pub fn skipped(&self) -> u64 {
        self.frames.skipped
    }

    /// Bytes after [`offset`](Self::offset) that do not yet make a whole record (after
    /// [`Next::Pending`]: a record still being written, or a truncated file).
    pub fn unread_tail(&self) -> u64 {
        self.frames.available() as u64
    }

    /// The damage that stopped this reader, if any.
    pub fn stopped(&self) -> Option<Damage> {
        self.frames.stopped
    }

    /// The next record, or why there is none now.
    pub fn next_record(&mut self) -> io::Result<Next<'_>> {
        self.frames.next_record(&mut self.source)
    }
}

impl Frames {
    fn offset(&self) -> u64 {
        self.base + self.start as u64
    }

    fn next_record(&mut self, source: &mut dyn Source) -> io::Result<Next<'_>> {
        if let Some(damage) = self.stopped {
            return Ok(Next::Stopped(damage));
        }
        loop {
            let offset = self.offset();
            // Classify first and drop the borrow of `buf`, so the arms below may refill it.
            let frame = Owned::from(framing::parse(&self.buf[self.start..]));
            match frame {
                Owned::Record {
                    data_len,
                    frame_len,
                } => {
                    if self.suspect.is_some_and(|s| s.offset == offset) {
                        self.suspect = None;
                    }
                    let data_start = self.start + HEADER_LEN;
                    self.start += frame_len;
                    return Ok(Next::Record(RecordRef {
                        offset,
                        end: offset + frame_len as u64,
                        data: &self.buf[data_start..data_start + data_len],
                    }));
                }
                Owned::Incomplete { needed } => {
                    if !self.fill(source, needed)? {
                        return Ok(Next::Pending);
                    }
                }
                Owned::BadLengthCrc => return Ok(self.stop(offset, DamageKind::BadLengthCrc)),
                Owned::TooLarge { len } => {
                    return Ok(self.stop(offset, DamageKind::TooLarge { len }))
                }
                Owned::BadDataCrc { frame_len } => {
                    let damage = Damage {
                        offset,
                        kind: DamageKind::BadDataCrc {
                            len: (frame_len - HEADER_LEN - FOOTER_LEN) as u64,
                        },
                    };
                    let followed =
                        self.fill(source, frame_len + 1)? || self.available() > frame_len;
                    let settled = self
                        .suspect
                        .filter(|s| s.offset == offset)
                        .is_some_and(|s| s.since.elapsed() >= self.tail_grace);
                    if followed || self.complete || settled {
                        self.suspect = None;
                        self.start += frame_len;
                        self.skipped += 1;
                        return Ok(Next::Skipped(damage));
                    }
                    if self.suspect.is_none_or(|s| s.offset != offset) {
                        self.suspect = Some(Suspect {
                            offset,
                            since: Instant::now(),
                        });
                    }
                    self.reread_from(source, offset)?;
                    return Ok(Next::Pending);
                }
            }
        }
    }

    fn available(&self) -> usize {
        self.buf.len() - self.start
    }

    fn stop(&mut self, offset: u64, kind: DamageKind) -> Next<'static> {
        let damage = Damage { offset, kind };
        self.stopped = Some(damage);
        Next::Stopped(damage)
    }

    /// Reads until `needed` bytes are available from `start`, or the source has no more for now.
    /// Returns whether any new byte arrived.
    fn fill(&mut self, source: &mut dyn Source, needed: usize) -> io::Result<bool> {
        if self.available() >= needed {
            return Ok(false);
        }
        // Drop consumed bytes so the buffer holds at most one partial record plus a chunk.
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.base += self.start as u64;
            self.start = 0;
        }
        let mut grew = false;
        while self.buf.len() < needed {
            let len = self.buf.len();
            let want = (needed - len).clamp(CHUNK, MAX_READ);
            self.buf.resize(len + want, 0);
            let n = loop {
                match source.read(&mut self.buf[len..]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        self.buf.truncate(len);
                        return Err(e);
                    }
                }
            };
            self.buf.truncate(len + n);
            if n == 0 {
                break;
            }
            grew = true;
        }
        Ok(grew)
    }

    /// Forgets buffered bytes from `offset` on, so the next fill reads them from the source again.
    fn reread_from(&mut self, source: &mut dyn Source, offset: u64) -> io::Result<()> {
        source.seek(SeekFrom::Start(offset))?;
        self.buf.clear();
        self.base = offset;
        self.start = 0;
        Ok(())
    }
}

/// [`Frame`] without its borrow.
enum Owned {
    Record { data_len: usize, frame_len: usize },
    Incomplete { needed: usize },
    BadLengthCrc,
    TooLarge { len: u64 },
    BadDataCrc { frame_len: usize },
}

impl From<Frame<'_>> for Owned {
    fn from(frame: Frame<'_>) -> Self {
        match frame {
            Frame::Incomplete { needed } => Owned::Incomplete { needed },
            Frame::BadLengthCrc => Owned::BadLengthCrc,
            Frame::TooLarge { len } => Owned::TooLarge { len },
            Frame::BadDataCrc { frame_len } => Owned::BadDataCrc { frame_len },
            Frame::Record { data, frame_len } => Owned::Record {
                data_len: data.len(),
                frame_len,
            },
        }
    }
}
