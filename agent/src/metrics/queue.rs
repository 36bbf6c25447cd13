//! The durable metrics queue: an append-only log on disk between the sources and the sink.
//!
//! A record is `u32 LE length | u32 LE CRC32C(length bytes ‖ payload) | payload`. Records live in
//! segment files `seg-<first position>.q` (positions are byte offsets in one logical stream that
//! never goes back), so data that was delivered can be deleted a segment at a time.
//!
//! * [`Queue::append`] writes records and fsyncs once for the whole batch before returning:
//!   whatever it acknowledged survives `kill -9` and a power cut.
//! * The sink reads in order from the delivered position ([`Queue::read`]) and records how far it
//!   got with [`Queue::ack`], atomically (`fsutil::write_atomic`). A restart resumes there; records
//!   delivered but not acknowledged are delivered again, so sinks must be idempotent.
//! * A new segment is filled with zeros up to `segment_bytes` and fsynced before records go into
//!   it (as database logs preallocate theirs): appends then overwrite blocks that already exist,
//!   so the file's size and extents do not change and each append's `fdatasync` flushes data only,
//!   without a filesystem journal commit (which, on a busy disk, waits for other writers' data).
//!   The end of the records is therefore found by checksum, not by the file's size: the last
//!   segment's records are its valid prefix, and a zero tail after it is free space.
//! * A torn tail after a crash (a record cut short or with a bad checksum at the end of the last
//!   segment, anything but zeros after the valid records) is truncated on open, never an error: it
//!   was never acknowledged. Truncating, rather than overwriting it later, guarantees that no
//!   leftover of it can ever line up behind newer records and pass for one.
//!   When the disk has no room for the zeros (a full state folder), the segment is used as it is
//!   and grows with each append: slower, never wrong.
//!   When there is no room even for the queue's folder (a state folder already full at the first
//!   start), the queue opens empty and its first append makes the folder and the segment; until
//!   that works, appends fail as on any full disk and the producer tries again later.
//! * A sealed segment is cut to its records' length before the next one starts, so a sealed
//!   segment's size is its records' length, with no preallocated tail.
//! * An append that fails (a full disk) leaves nothing of itself and changes nothing: the producer
//!   tries again later. An acknowledgement whose position cannot be written is still taken (the
//!   sink stored those records); the next one writes it, and after a crash before that the records
//!   are delivered again.
//! * The size is bounded: when the undelivered backlog would pass `max_bytes`, [`Queue::append`]
//!   refuses with [`QueueError::Full`] and the producer backs off. One batch is always accepted
//!   into an empty queue, so an oversized batch cannot wedge a source.
//!
//! This module stores opaque bytes; it never decodes a payload and never talks to a sink.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Classify, ErrorClass};
use crate::fsutil::{no_room, sync_dir, write_atomic};

const HEADER: u64 = 8;
/// A record longer than this is damage, not data (the pipeline writes batches far smaller).
const MAX_RECORD: u64 = 256 * 1024 * 1024;
const DELIVERED_FILE: &str = "delivered.json";

/// Size limits. Invariant: both are non-zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueConfig {
    /// Most undelivered bytes held before producers are told to back off.
    pub max_bytes: u64,
    /// A new segment is started once the current one holds this many bytes; each segment is
    /// preallocated to this size (see the module docs).
    pub segment_bytes: u64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            max_bytes: 256 * 1024 * 1024,
            segment_bytes: 8 * 1024 * 1024,
        }
    }
}

/// Why the queue refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The backlog is at its limit: back off and try again after the sink caught up.
    #[error("the metrics queue is full ({backlog} bytes undelivered, limit {max})")]
    Full { backlog: u64, max: u64 },
    #[error("metrics queue {path}: cannot {what}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl Classify for QueueError {
    fn class(&self) -> ErrorClass {
        ErrorClass::Io
    }

    fn hint(&self) -> Option<String> {
        match self {
            QueueError::Full { .. } => {
                Some("the metastore is not keeping up or is down; check it".into())
            }
            QueueError::Io { .. } => {
                Some("check free space and permissions of the --state-dir volume".into())
            }
        }
    }
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> QueueError + 'a {
    move |source| QueueError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Records read from the queue, and the position just after the last of them.
#[derive(Debug, Default)]
pub struct Batch {
    pub records: Vec<Vec<u8>>,
    /// Pass to [`Queue::ack`] once every record is stored.
    pub end: u64,
    /// Records found damaged inside sealed segments (disk corruption) and skipped.
    pub damaged: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Delivered {
    delivered: u64,
}

/// The open queue. Invariants: `segments` maps each segment's first position to its length (the
/// bytes of its records) and is never empty; the last segment is the one appended to, through
/// `active`, and holds only zeros after its length; every other segment's file is exactly its
/// length long; `delivered <= end`. `active` is `None` only while the queue is empty and its
/// folder could not be made for want of room (see [`Queue::open`]): the first append makes it.
#[derive(Debug)]
pub struct Queue {
    dir: PathBuf,
    cfg: QueueConfig,
    segments: BTreeMap<u64, u64>,
    active: Option<File>,
    delivered: u64,
}

fn segment_name(start: u64) -> String {
    format!("seg-{start:020}.q")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    name.strip_prefix("seg-")?.strip_suffix(".q")?.parse().ok()
}

/// Writes zeros over `from..to` of `file` and fsyncs it, so later writes there change neither its
/// size nor its extents (see the module docs).
fn preallocate(file: &File, from: u64, to: u64) -> io::Result<()> {
    const CHUNK: usize = 1 << 20;
    let zeros = vec![0u8; CHUNK];
    let mut at = from;
    while at < to {
        // Bounded by CHUNK, so it fits a usize.
        let n = (to - at).min(CHUNK as u64) as usize;
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    file.sync_all()
}

/// Preallocates `from..to` of `file` if the disk has room; otherwise cuts what was written back to
/// `from`, so appends grow the file instead (see the module docs).
fn preallocate_if_room(file: &File, from: u64, to: u64, path: &Path) -> Result<(), QueueError> {
    if let Err(e) = preallocate(file, from, to) {
        tracing::debug!(segment = %path.display(), error = %e,
            "cannot preallocate a metrics queue segment; it grows with each append");
        file.set_len(from)
            .and_then(|()| file.sync_all())
            .map_err(io_err("cut a segment's zeros", path))?;
    }
    Ok(())
}

/// Creates segment `path`, preallocated to `bytes` when the disk has room, and makes its name
/// durable in `dir`.
fn create_segment(dir: &Path, path: &Path, bytes: u64) -> Result<File, QueueError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(io_err("create a segment", path))?;
    preallocate_if_room(&file, 0, bytes, path)?;
    sync_dir(dir).map_err(io_err("sync the folder", dir))?;
    Ok(file)
}

/// Length of the valid prefix of a segment's bytes: every whole record with a good checksum, up
/// to the first one that is cut short or damaged (or the zeros of a preallocated tail, which are
/// never a record: a zero header's checksum does not match).
fn valid_prefix(bytes: &[u8]) -> u64 {
    let mut at = 0usize;
    while let Some(len) = record_at(bytes, at) {
        at += HEADER as usize + len;
    }
    at as u64
}

/// The payload length of a good record starting at `at`, or `None`.
fn record_at(bytes: &[u8], at: usize) -> Option<usize> {
    let header = bytes.get(at..at + HEADER as usize)?;
    let len_bytes: [u8; 4] = header[..4].try_into().ok()?;
    let crc = u32::from_le_bytes(header[4..8].try_into().ok()?);
    let len = u32::from_le_bytes(len_bytes) as usize;
    if len as u64 > MAX_RECORD {
        return None;
    }
    let payload = bytes.get(at + HEADER as usize..at + HEADER as usize + len)?;
    (checksum(&len_bytes, payload) == crc).then_some(len)
}

/// Appends the record of `payload` (`len` bytes long) to `buf`.
fn encode(buf: &mut Vec<u8>, len: u32, payload: &[u8]) {
    let len_bytes = len.to_le_bytes();
    buf.extend_from_slice(&len_bytes);
    buf.extend_from_slice(&checksum(&len_bytes, payload).to_le_bytes());
    buf.extend_from_slice(payload);
}

fn checksum(len_bytes: &[u8; 4], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(len_bytes), payload)
}

impl Queue {
    /// Opens (or creates) the queue in `dir`, truncating a torn tail and deleting segments that
    /// were wholly delivered.
    pub fn open(dir: &Path, cfg: QueueConfig) -> Result<Queue, QueueError> {
        match fs::create_dir_all(dir) {
            Ok(()) => {}
            // Never made, and no room to make it (a state folder already full at the first
            // start): an empty queue, whose first segment is made by the first append.
            Err(e) if no_room(&e) && !dir.exists() => {
                tracing::debug!(dir = %dir.display(), error = %e,
                    "no room to make the metrics queue's folder; the first append makes it");
                return Ok(Queue {
                    dir: dir.to_path_buf(),
                    cfg,
                    segments: BTreeMap::from([(0, 0)]),
                    active: None,
                    delivered: 0,
                });
            }
            Err(e) => return Err(io_err("create the folder", dir)(e)),
        }
        let mut segments = BTreeMap::new();
        for entry in fs::read_dir(dir).map_err(io_err("list the folder", dir))? {
            let entry = entry.map_err(io_err("list the folder", dir))?;
            if let Some(start) = parse_segment_name(&entry.file_name().to_string_lossy()) {
                let len = entry
                    .metadata()
                    .map_err(io_err("stat a segment", dir))?
                    .len();
                segments.insert(start, len);
            }
        }
        let delivered_path = dir.join(DELIVERED_FILE);
        let mut delivered = match fs::read(&delivered_path) {
            Ok(bytes) => serde_json::from_slice::<Delivered>(&bytes)
                .map(|d| d.delivered)
                .unwrap_or_else(|e| {
                    // Only write_atomic writes it, so this is outside damage; redelivering is safe.
                    tracing::warn!(error = %e, "unreadable delivered position; redelivering the queue");
                    0
                }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io_err("read the delivered position", &delivered_path)(e)),
        };
        if segments.is_empty() {
            // A fresh queue, or one whose files were removed by hand: continue after what was
            // delivered so positions never go back.
            let path = dir.join(segment_name(delivered));
            create_segment(dir, &path, cfg.segment_bytes)?;
            segments.insert(delivered, 0);
        }
        let (&last_start, &last_len) = segments.iter().next_back().ok_or_else(|| {
            io_err("find a segment", dir)(io::Error::other("no segment after creating one"))
        })?;
        let last_path = dir.join(segment_name(last_start));
        let bytes = fs::read(&last_path).map_err(io_err("read a segment", &last_path))?;
        let valid = valid_prefix(&bytes);
        let active = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&last_path)
            .map_err(io_err("open a segment", &last_path))?;
        // `bytes` is the file as read; its length is the file's (`last_len` may be older).
        let tail = bytes.get(valid as usize..).unwrap_or_default();
        let mut size = bytes.len() as u64;
        if tail.iter().any(|&b| b != 0) {
            tracing::warn!(segment = %last_path.display(), kept = valid, dropped = tail.len(),
                "truncating a torn tail left by a crash (it was never acknowledged)");
            active
                .set_len(valid)
                .map_err(io_err("truncate a torn tail", &last_path))?;
            active
                .sync_all()
                .map_err(io_err("sync a segment", &last_path))?;
            size = valid;
        }
        // A zero tail is preallocated space (or a record whose bytes never reached the disk): the
        // records end at `valid` either way, and appends overwrite the zeros in place. A segment
        // that was cut, or written before segments were preallocated, gets its zeros now.
        if size < cfg.segment_bytes {
            preallocate_if_room(&active, size, cfg.segment_bytes, &last_path)?;
        }
        if valid != last_len {
            segments.insert(last_start, valid);
        }
        let first = *segments.keys().next().unwrap_or(&last_start);
        let end = last_start + valid;
        delivered = delivered.clamp(first, end);
        let mut queue = Queue {
            dir: dir.to_path_buf(),
            cfg,
            segments,
            active: Some(active),
            delivered,
        };
        queue.delete_delivered_segments()?;
        Ok(queue)
    }

    /// The position after the last record appended.
    pub fn end(&self) -> u64 {
        self.segments
            .iter()
            .next_back()
            .map_or(0, |(start, len)| start + len)
    }

    /// The position up to which the sink has stored everything.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// Bytes appended but not yet delivered.
    pub fn backlog(&self) -> u64 {
        self.end() - self.delivered
    }

    /// True when a batch of `bytes` payload bytes would be refused now.
    pub fn would_refuse(&self, bytes: u64) -> bool {
        let backlog = self.backlog();
        backlog > 0 && backlog + bytes > self.cfg.max_bytes
    }

    /// The bytes `payloads` take on disk.
    pub fn encoded_len(payloads: &[Vec<u8>]) -> u64 {
        payloads.iter().map(|p| HEADER + p.len() as u64).sum()
    }

    /// Appends `payloads` as records and fsyncs them. When this returns `Ok`, they are durable.
    pub fn append(&mut self, payloads: &[Vec<u8>]) -> Result<(), QueueError> {
        if payloads.is_empty() {
            return Ok(());
        }
        let size = Queue::encoded_len(payloads);
        if self.would_refuse(size) {
            return Err(QueueError::Full {
                backlog: self.backlog(),
                max: self.cfg.max_bytes,
            });
        }
        self.roll_if_needed()?;
        let mut buf = Vec::with_capacity(size as usize);
        for payload in payloads {
            let len = u32::try_from(payload.len())
                .ok()
                .filter(|l| u64::from(*l) <= MAX_RECORD)
                .ok_or_else(|| {
                    io_err("append a record", &self.dir)(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "record too large",
                    ))
                })?;
            encode(&mut buf, len, payload);
        }
        let (&start, &len) =
            self.segments.iter().next_back().ok_or_else(|| {
                io_err("find a segment", &self.dir)(io::Error::other("no segment"))
            })?;
        let path = self.dir.join(segment_name(start));
        let active = match self.active.take() {
            Some(active) => self.active.insert(active),
            // The first append to a queue whose folder could not be made at open (it is empty).
            None => {
                fs::create_dir_all(&self.dir).map_err(io_err("create the folder", &self.dir))?;
                let made = create_segment(&self.dir, &path, self.cfg.segment_bytes)?;
                self.active.insert(made)
            }
        };
        // At the records' end, over the preallocated zeros (past them, the file grows).
        let written = active
            .write_all_at(&buf, len)
            .and_then(|()| active.sync_data());
        if let Err(e) = written {
            // Leave no half batch behind (disk full): what is not acknowledged must not stay.
            let _ = active.set_len(len);
            return Err(io_err("append records", &path)(e));
        }
        self.segments.insert(start, len + size);
        Ok(())
    }

    fn roll_if_needed(&mut self) -> Result<(), QueueError> {
        let end = self.end();
        let (&start, &len) =
            self.segments.iter().next_back().ok_or_else(|| {
                io_err("find a segment", &self.dir)(io::Error::other("no segment"))
            })?;
        if len < self.cfg.segment_bytes {
            return Ok(());
        }
        debug_assert_eq!(start + len, end);
        // Seal the segment: cut its unused preallocated zeros, durably before the next segment
        // exists, so that every segment but the last is exactly as long as its records.
        let sealed = self.dir.join(segment_name(start));
        if let Some(active) = &self.active {
            active
                .set_len(len)
                .and_then(|()| active.sync_all())
                .map_err(io_err("seal a segment", &sealed))?;
        }
        let path = self.dir.join(segment_name(end));
        let file = create_segment(&self.dir, &path, self.cfg.segment_bytes)?;
        self.active = Some(file);
        self.segments.insert(end, 0);
        self.delete_delivered_segments()
    }

    /// Reads records in order from the delivered position, up to about `max_bytes` (at least one
    /// record when there is one).
    pub fn read(&self, max_bytes: u64) -> Result<Batch, QueueError> {
        let mut batch = Batch {
            end: self.delivered,
            ..Batch::default()
        };
        let mut taken = 0u64;
        let mut pos = self.delivered;
        while pos < self.end() && (taken < max_bytes || batch.records.is_empty()) {
            let Some((&start, &len)) = self.segments.range(..=pos).next_back() else {
                break;
            };
            if pos >= start + len {
                // The end of a sealed segment: go on with the next one.
                match self.segments.range(pos + 1..).next() {
                    Some((&next, _)) => {
                        pos = next;
                        continue;
                    }
                    None => break,
                }
            }
            let path = self.dir.join(segment_name(start));
            let mut file = File::open(&path).map_err(io_err("open a segment", &path))?;
            file.seek(SeekFrom::Start(pos - start))
                .map_err(io_err("seek a segment", &path))?;
            let mut reader = io::BufReader::new(file.take(start + len - pos));
            while pos < start + len && (taken < max_bytes || batch.records.is_empty()) {
                match read_record(&mut reader) {
                    Ok(Some(payload)) => {
                        pos += HEADER + payload.len() as u64;
                        taken += HEADER + payload.len() as u64;
                        batch.records.push(payload);
                    }
                    Ok(None) | Err(_) => {
                        // Damage inside a segment that was fsynced whole: the disk lost it. Skip
                        // the rest of this segment rather than wedge delivery forever.
                        tracing::error!(segment = %path.display(), at = pos - start,
                            "damaged record in the metrics queue; skipping the rest of the segment");
                        batch.damaged += 1;
                        pos = start + len;
                    }
                }
            }
        }
        batch.end = pos;
        Ok(batch)
    }

    /// Records that everything before `position` is stored by the sink, and deletes segments that
    /// hold nothing else. The position is taken even when writing it fails (the error says so):
    /// reading goes on after it, the next ack writes it, and a restart before that delivers those
    /// records again, from the oldest segment left.
    pub fn ack(&mut self, position: u64) -> Result<(), QueueError> {
        if position <= self.delivered {
            return Ok(());
        }
        let position = position.min(self.end());
        self.delivered = position;
        // Deleting first frees room for the position's file on a full disk; a restart that finds
        // an older position begins at the oldest segment left (see `open`).
        self.delete_delivered_segments()?;
        let path = self.dir.join(DELIVERED_FILE);
        let json = serde_json::to_vec(&Delivered {
            delivered: position,
        })
        .map_err(|e| io_err("encode the delivered position", &path)(io::Error::other(e)))?;
        write_atomic(&path, &json).map_err(io_err("record the delivered position", &path))
    }

    fn delete_delivered_segments(&mut self) -> Result<(), QueueError> {
        let active = self.segments.keys().next_back().copied();
        let done: Vec<u64> = self
            .segments
            .iter()
            .filter(|(start, len)| Some(**start) != active && *start + *len <= self.delivered)
            .map(|(start, _)| *start)
            .collect();
        for start in done {
            let path = self.dir.join(segment_name(start));
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("delete a delivered segment", &path)(e)),
            }
            self.segments.remove(&start);
        }
        Ok(())
    }

    /// How many segment files exist (for tests and stats).
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }
}

/// One record from a reader positioned at a record; `None` when it is damaged or cut short.
fn read_record(reader: &mut impl Read) -> io::Result<Option<Vec<u8>>> {
    let mut header = [0u8; HEADER as usize];
    if reader.read_exact(&mut header).is_err() {
        return Ok(None);
    }
    let len_bytes: [u8; 4] = [header[0], header[1], header[2], header[3]];
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let len = u64::from(u32::from_le_bytes(len_bytes));
    if len > MAX_RECORD {
        return Ok(None);
    }
    let mut payload = vec![0u8; len as usize];
    if reader.read_exact(&mut payload).is_err() {
        return Ok(None);
    }
    Ok((checksum(&len_bytes, &payload) == crc).then_some(payload))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn cfg(max: u64, seg: u64) -> QueueConfig {
        QueueConfig {
            max_bytes: max,
            segment_bytes: seg,
        }
    }

    fn payloads(range: std::ops::Range<u32>) -> Vec<Vec<u8>> {
        range.map(|i| format!("record {i}").into_bytes()).collect()
    }

    fn drain(q: &mut Queue) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            let batch = q.read(40).unwrap();
            if batch.records.is_empty() {
                return out;
            }
            out.extend(
                batch
                    .records
                    .iter()
                    .map(|r| String::from_utf8(r.clone()).unwrap()),
            );
            q.ack(batch.end).unwrap();
        }
    }

    #[test]
    fn restart_resumes_after_the_acknowledged_position() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = Queue::open(dir.path(), cfg(1 << 20, 64)).unwrap();
        q.append(&payloads(0..10)).unwrap();
        let first = q.read(30).unwrap();
        assert!(!first.records.is_empty());
        let delivered_count = first.records.len();
        q.ack(first.end).unwrap();
        // A batch read but not acknowledged is delivered again after a restart.
        let unacked = q.read(30).unwrap();
        assert!(!unacked.records.is_empty());
        drop(q);
        let mut q = Queue::open(dir.path(), cfg(1 << 20, 64)).unwrap();
        let rest = drain(&mut q);
        let expected: Vec<String> = (delivered_count as u32..10)
            .map(|i| format!("record {i}"))
            .collect();
        assert_eq!(rest, expected);
        // Appends after a restart go on from the same logical end.
        q.append(&payloads(10..12)).unwrap();
        drop(q);
        let mut q = Queue::open(dir.path(), cfg(1 << 20, 64)).unwrap();
        assert_eq!(drain(&mut q), ["record 10", "record 11"]);
        assert_eq!(q.backlog(), 0);
    }

    #[test]
    fn a_torn_tail_is_truncated_and_appending_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = Queue::open(dir.path(), cfg(1 << 20, 1 << 20)).unwrap();
        q.append(&payloads(0..3)).unwrap();
        let end = q.end();
        drop(q);
        let seg = dir.path().join(segment_name(0));
        // A crash mid-append: a header that promises 100 bytes, and only 6 of them.
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&100u32.to_le_bytes()).unwrap();
        f.write_all(&[1, 2, 3, 4, 5, 6]).unwrap();
        drop(f);
        let mut q = Queue::open(dir.path(), cfg(1 << 20, 1 << 20)).unwrap();
        assert_eq!(q.end(), end);
        // The torn bytes are gone; what follows the records is fresh preallocated zeros.
        let bytes = fs::read(&seg).unwrap();
        assert_eq!(bytes.len() as u64, 1 << 20);
        assert!(bytes[end as usize..].iter().all(|&b| b == 0));
        q.append(&payloads(3..4)).unwrap();
        drop(q);
        let mut q = Queue::open(dir.path(), cfg(1 << 20, 1 << 20)).unwrap();
        assert_eq!(
            drain(&mut q),
            ["record 0", "record 1", "record 2", "record 3"]
        );
        // A flipped byte in the last record is a torn tail too.
        q.append(&payloads(4..5)).unwrap();
        let end = q.end();
        drop(q);
        let mut bytes = fs::read(&seg).unwrap();
        let last = end as usize - 1;
        bytes[last] ^= 0xff;
        fs::write(&seg, &bytes).unwrap();
        let q = Queue::open(dir.path(), cfg(1 << 20, 1 << 20)).unwrap();
        assert!(q.end() < end);
        assert_eq!(q.backlog(), 0);
    }

    #[test]
    fn a_full_queue_refuses_until_the_sink_catches_up() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = Queue::open(dir.path(), cfg(50, 1 << 20)).unwrap();
        q.append(&payloads(0..2)).unwrap(); // 2 × (8 + 8) = 32 bytes
        let refused = q.append(&payloads(2..4));
        assert!(matches!(
            refused,
            Err(QueueError::Full {
                backlog: 32,
                max: 50
            })
        ));
        // Nothing of the refused batch was written.
        let batch = q.read(1 << 20).unwrap();
        assert_eq!(batch.records.len(), 2);
        q.ack(batch.end).unwrap();
        q.append(&payloads(2..4)).unwrap();
        // An empty queue takes one batch even when it is larger than the limit.
        let batch = q.read(1 << 20).unwrap();
        q.ack(batch.end).unwrap();
        q.append(&payloads(10..20)).unwrap();
        assert!(q.would_refuse(1));
    }

    #[test]
    fn delivered_segments_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = Queue::open(dir.path(), cfg(1 << 20, 40)).unwrap();
        for i in 0..10 {
            q.append(&payloads(i..i + 1)).unwrap();
        }
        assert!(q.segment_count() > 3);
        let got = drain(&mut q);
        assert_eq!(got.len(), 10);
        assert_eq!(q.segment_count(), 1);
        let files = fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                parse_segment_name(&e.as_ref().unwrap().file_name().to_string_lossy()).is_some()
            })
            .count();
        assert_eq!(files, 1);
        drop(q);
        let q = Queue::open(dir.path(), cfg(1 << 20, 40)).unwrap();
        assert_eq!(q.backlog(), 0);
        assert!(q.end() > 0);
    }

    /// The segment files' sizes, first to last.
    fn segment_sizes(dir: &Path) -> Vec<u64> {
        let mut files: Vec<(u64, u64)> = fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| {
                let e = e.unwrap();
                let start = parse_segment_name(&e.file_name().to_string_lossy())?;
                Some((start, e.metadata().unwrap().len()))
            })
            .collect();
        files.sort();
        files.into_iter().map(|(_, len)| len).collect()
    }

    #[test]
    fn zeros_are_never_a_record() {
        let zeros = [0u8; 64];
        assert_eq!(record_at(&zeros, 0), None);
        assert_eq!(valid_prefix(&zeros), 0);
        let mut bytes = Vec::new();
        let payload = b"record";
        encode(&mut bytes, payload.len() as u32, payload);
        bytes.extend_from_slice(&zeros);
        assert_eq!(valid_prefix(&bytes), HEADER + payload.len() as u64);
    }

    #[test]
    fn a_preallocated_segments_zero_tail_is_free_space_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let seg = dir.path().join(segment_name(0));
        let mut q = Queue::open(dir.path(), cfg(1 << 20, 4096)).unwrap();
        assert_eq!(fs::metadata(&seg).unwrap().len(), 4096);
        q.append(&payloads(0..3)).unwrap();
        let end = q.end();
        // Appends overwrite the zeros: the file keeps its size.
        assert_eq!(fs::metadata(&seg).unwrap().len(), 4096);
        drop(q);
        // A restart finds the records' end by checksum, keeps the zeros, and loses nothing.
        let mut q = Queue::open(dir.path(), cfg(1 << 20, 4096)).unwrap();
        assert_eq!(q.end(), end);
        assert_eq!(q.backlog(), end);
        assert_eq!(fs::metadata(&seg).unwrap().len(), 4096);
        q.append(&payloads(3..5)).unwrap();
        drop(q);
        let mut q = Queue::open(dir.path(), cfg(1 << 20, 4096)).unwrap();
        assert_eq!(
            drain(&mut q),
            ["record 0", "record 1", "record 2", "record 3", "record 4"]
        );
        // A segment written before preallocation (no zeros) gets them on open.
        let old = tempfile::tempdir().unwrap();
        let mut q = Queue::open(old.path(), cfg(1 << 20, 4096)).unwrap();
        q.append(&payloads(0..2)).unwrap();
        let end = q.end();
        drop(q);
        let seg = old.path().join(segment_name(0));
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(end)
            .unwrap();
        let mut q = Queue::open(old.path(), cfg(1 << 20, 4096)).unwrap();
        assert_eq!(q.end(), end);
        assert_eq!(fs::metadata(&seg).unwrap().len(), 4096);
        q.append(&payloads(2..3)).unwrap();
        assert_eq!(drain(&mut q), ["record 0", "record 1", "record 2"]);
    }

    #[test]
    fn a_crash_mid_record_in_a_preallocated_segment_leaves_no_record_behind() {
        let dir = tempfile::tempdir().unwrap();
        let seg = dir.path().join(segment_name(0));
        let mut q = Queue::open(dir.path(), cfg(1 << 20, 4096)).unwrap();
        q.append(&payloads(0..3)).unwrap();
        let end = q.end();
        drop(q);
        // A crash mid-append of two records, inside the preallocated zeros: the first is cut
        // short (its last bytes are still zeros), the second reached the disk whole.
        let torn = b"torn 0".to_vec();
        let whole = b"stale 1".to_vec();
        let mut bytes = Vec::new();
        for p in [&torn, &whole] {
            encode(&mut bytes, p.len() as u32, p);
        }
        let cut = HEADER as usize + 2;
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        f.write_all_at(&bytes[..cut], end).unwrap();
        f.write_all_at(
            &bytes[HEADER as usize + torn.len()..],
            end + (HEADER + torn.len() as u64),
        )
        .unwrap();
        drop(f);
        let mut q = Queue::open(dir.path(), cfg(1 << 20, 4096)).unwrap();
        assert_eq!(
            q.end(),
            end,
            "the torn record and what follows it are the end"
        );
        let after = fs::read(&seg).unwrap();
        assert_eq!(after.len(), 4096, "preallocated again");
        assert!(
            after[end as usize..].iter().all(|&b| b == 0),
            "nothing of the tail is left"
        );
        // A new record as long as the torn one ends exactly where the stale whole one began:
        // after another restart that one must not appear.
        let newer = b"newer!".to_vec();
        assert_eq!(newer.len(), torn.len());
        q.append(&[newer]).unwrap();
        q.append(&payloads(3..4)).unwrap();
        drop(q);
        let mut q = Queue::open(dir.path(), cfg(1 << 20, 4096)).unwrap();
        assert_eq!(
            drain(&mut q),
            ["record 0", "record 1", "record 2", "newer!", "record 3"]
        );
    }

    #[test]
    fn sealed_segments_are_cut_to_their_records_and_a_half_made_one_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = Queue::open(dir.path(), cfg(1 << 20, 64)).unwrap();
        for i in 0..12 {
            q.append(&payloads(i..i + 1)).unwrap();
        }
        let lens: Vec<u64> = q.segments.values().copied().collect();
        let sizes = segment_sizes(dir.path());
        let n = sizes.len();
        assert!(n > 2);
        // Every sealed segment is exactly its records; the last one is preallocated.
        assert_eq!(sizes[..n - 1], lens[..n - 1]);
        assert_eq!(sizes[n - 1], lens[n - 1].max(64));
        let end = q.end();
        let last = *q.segments.keys().next_back().unwrap();
        drop(q);
        // A crash in a roll after the active segment was sealed, while the next one was being
        // preallocated: its file exists, partly zeroed.
        let half = dir.path().join(segment_name(end));
        let active = dir.path().join(segment_name(last));
        OpenOptions::new()
            .write(true)
            .open(&active)
            .unwrap()
            .set_len(end - last)
            .unwrap();
        fs::write(&half, [0u8; 10]).unwrap();
        let mut q = Queue::open(dir.path(), cfg(1 << 20, 64)).unwrap();
        assert_eq!(q.end(), end);
        q.append(&payloads(12..13)).unwrap();
        drop(q);
        let mut q = Queue::open(dir.path(), cfg(1 << 20, 64)).unwrap();
        let got = drain(&mut q);
        let expected: Vec<String> = (0..13).map(|i| format!("record {i}")).collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn an_ack_whose_position_cannot_be_written_is_taken_and_a_restart_delivers_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = Queue::open(dir.path(), cfg(1 << 20, 64)).unwrap();
        q.append(&payloads(0..10)).unwrap();
        let first = q.read(1 << 20).unwrap();
        assert_eq!(first.records.len(), 10);
        // A folder where the position goes: writing it fails, as on a full disk.
        let blocker = dir.path().join(DELIVERED_FILE);
        fs::create_dir_all(blocker.join("x")).unwrap();
        assert!(q.ack(first.end).is_err());
        // Taken all the same: reading goes on after it, and sealed segments are gone.
        assert_eq!(q.delivered(), first.end);
        assert!(q.read(1 << 20).unwrap().records.is_empty());
        assert_eq!(q.segment_count(), 1);
        q.append(&payloads(10..12)).unwrap();
        drop(q);
        fs::remove_dir_all(&blocker).unwrap();
        // The restart begins at the oldest segment left: some records again, none lost.
        let mut q = Queue::open(dir.path(), cfg(1 << 20, 64)).unwrap();
        let again = drain(&mut q);
        assert!(again.ends_with(&["record 10".to_string(), "record 11".to_string()]));
        assert!(again.len() < 12, "{again:?}");
    }
}
