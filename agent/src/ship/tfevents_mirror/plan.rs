//! Which bytes of an event file go into which stored segment, and when.
//!
//! A mirrored file is stored as segments, each a run of whole records (see
//! [`segment_name`](crate::tfevents::discover::segment_name)). Every segment but the last is
//! *closed*: written once and never touched again. The last one may be *open*: while it holds
//! fewer than `tail_bytes`, the next upload replaces it with itself plus the new records, so a
//! slowly growing file does not become thousands of tiny objects. Once it holds `tail_bytes` or
//! more it is closed and the next records start a new segment, so each byte is uploaded about once
//! and only the small open tail is ever sent again. No segment holds more than about
//! `segment_bytes` (a record larger than that is a segment of its own), so a file of any size is
//! stored as objects of a bounded size and a restart sends at most one segment again.
//!
//! This module decides; it never reads files or talks to storage.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// What is stored of one file. Invariants: `stored` is a record boundary; when `open` is set,
/// `open <= stored` and the segment starting at `open` holds exactly `[open, stored)`; every byte
/// before `open.unwrap_or(stored)` is in closed segments.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stored {
    /// Where the open segment starts, if the last segment is open.
    pub open: Option<u64>,
    /// Bytes from the start of the file that are stored.
    pub stored: u64,
}

/// Segment sizes. Invariant: `tail_bytes <= segment_bytes`, both at least 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The open segment is closed once it holds this many bytes.
    pub tail_bytes: u64,
    /// No segment holds more (unless one record does).
    pub segment_bytes: u64,
}

impl Limits {
    /// Limits with the invariant restored: both at least 1, the tail no larger than a segment.
    pub fn new(tail_bytes: u64, segment_bytes: u64) -> Limits {
        let segment_bytes = segment_bytes.max(1);
        Limits {
            tail_bytes: tail_bytes.clamp(1, segment_bytes),
            segment_bytes,
        }
    }
}

/// One upload: the bytes `[start, end)` of the file become the segment starting at `start`
/// (replacing it when it is the open one). Invariant: `start < end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upload {
    pub start: u64,
    pub end: u64,
    /// Nothing will be added to this segment after this upload.
    pub closes: bool,
}

/// Where the segments being read ahead of storage will end, found as records are read.
///
/// Invariants: `anchor` is where the segment being filled starts; `ends` are increasing, each a
/// record boundary after `anchor`'s segment start and more than `stored`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cuts {
    anchor: u64,
    ends: VecDeque<u64>,
    segment_bytes: u64,
}

impl Cuts {
    /// Cuts for a file whose stored part is `stored`; the records read next start at
    /// `stored.stored`.
    pub fn new(stored: &Stored, limits: Limits) -> Cuts {
        Cuts {
            anchor: stored.open.unwrap_or(stored.stored),
            ends: VecDeque::new(),
            segment_bytes: limits.segment_bytes,
        }
    }

    /// Takes the next record (good or damaged, both are stored as they are), `[offset, end)`, in
    /// file order: a segment that would grow past `segment_bytes` ends before it.
    pub fn record(&mut self, offset: u64, end: u64) {
        if end - self.anchor > self.segment_bytes && offset > self.anchor {
            self.ends.push_back(offset);
            self.anchor = offset;
        }
    }

    /// The end of the next full segment, if one is known.
    pub fn next(&self) -> Option<u64> {
        self.ends.front().copied()
    }
}

/// The next upload for a file whose whole records end at `boundary`, or `None` when nothing is to
/// be sent now. Full segments go at once; the rest (the tail) only when `due`.
pub fn next_upload(
    stored: &mut Stored,
    cuts: &mut Cuts,
    boundary: u64,
    limits: Limits,
    due: bool,
) -> Option<Upload> {
    // A segment that became full exactly at what is stored needs no upload, only closing.
    if cuts.next() == Some(stored.stored) {
        cuts.ends.pop_front();
        stored.open = None;
    }
    if boundary <= stored.stored {
        return None;
    }
    let start = stored.open.unwrap_or(stored.stored);
    match cuts.next() {
        Some(end) => Some(Upload {
            start,
            end,
            closes: true,
        }),
        None if due => Some(Upload {
            start,
            end: boundary,
            closes: boundary - start >= limits.tail_bytes,
        }),
        None => None,
    }
}

/// Records that `upload` is stored.
pub fn uploaded(stored: &mut Stored, cuts: &mut Cuts, upload: Upload) {
    stored.stored = upload.end;
    stored.open = (!upload.closes).then_some(upload.start);
    if cuts.next() == Some(upload.end) {
        cuts.ends.pop_front();
    } else if upload.closes {
        // Closed for its size at the last whole record: the next segment starts here.
        cuts.anchor = upload.end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds records of the given sizes and runs every upload that is due, returning the stored
    /// segments as (start, end) in upload order (a replaced open segment appears again).
    struct Sim {
        stored: Stored,
        cuts: Cuts,
        boundary: u64,
        limits: Limits,
        sent: u64,
        uploads: Vec<Upload>,
    }

    impl Sim {
        fn new(limits: Limits) -> Sim {
            let stored = Stored::default();
            Sim {
                cuts: Cuts::new(&stored, limits),
                stored,
                boundary: 0,
                limits,
                sent: 0,
                uploads: Vec::new(),
            }
        }

        fn write(&mut self, records: &[u64]) {
            for &len in records {
                self.cuts.record(self.boundary, self.boundary + len);
                self.boundary += len;
            }
        }

        fn pass(&mut self, due: bool) {
            while let Some(up) = next_upload(
                &mut self.stored,
                &mut self.cuts,
                self.boundary,
                self.limits,
                due,
            ) {
                self.sent += up.end - up.start;
                self.uploads.push(up);
                uploaded(&mut self.stored, &mut self.cuts, up);
            }
        }

        /// The segments as they stand: the last upload of each start.
        fn segments(&self) -> Vec<(u64, u64)> {
            let mut by_start = std::collections::BTreeMap::new();
            for u in &self.uploads {
                by_start.insert(u.start, u.end);
            }
            by_start.into_iter().collect()
        }
    }

    #[test]
    fn a_slow_file_extends_its_open_tail_until_it_is_full() {
        let mut sim = Sim::new(Limits::new(100, 1000));
        for _ in 0..5 {
            sim.write(&[30]);
            sim.pass(true);
        }
        // 30, 60, 90 replace one open segment; 120 closes it; 30 starts the next.
        assert_eq!(sim.segments(), [(0, 120), (120, 150)]);
        assert_eq!(
            sim.stored,
            Stored {
                open: Some(120),
                stored: 150
            }
        );
        assert_eq!(sim.sent, 30 + 60 + 90 + 120 + 30);
    }

    #[test]
    fn a_fast_file_sends_each_byte_once() {
        let mut sim = Sim::new(Limits::new(100, 1000));
        for _ in 0..10 {
            sim.write(&[50, 70]);
            sim.pass(true);
        }
        assert_eq!(sim.sent, 1200, "each upload closed its segment");
        assert_eq!(sim.segments().len(), 10);
        assert_eq!(sim.stored.open, None);
    }

    #[test]
    fn a_large_backlog_is_cut_into_bounded_segments_at_record_boundaries() {
        let mut sim = Sim::new(Limits::new(100, 1000));
        sim.write(&[400; 10]);
        sim.write(&[2500]);
        sim.write(&[10]);
        sim.pass(false);
        // Full segments go even before the tail is due; the tail waits.
        assert_eq!(
            sim.segments(),
            [
                (0, 800),
                (800, 1600),
                (1600, 2400),
                (2400, 3200),
                (3200, 4000),
                (4000, 6500)
            ],
            "the 2,500-byte record is a segment of its own"
        );
        assert_eq!(
            sim.stored,
            Stored {
                open: None,
                stored: 6500
            }
        );
        sim.pass(true);
        assert_eq!(sim.segments().last(), Some(&(6500, 6510)));
        assert_eq!(sim.stored.open, Some(6500));
        assert_eq!(sim.sent, 6510);
    }

    #[test]
    fn an_open_tail_is_closed_without_an_upload_when_the_next_record_is_huge() {
        let limits = Limits::new(100, 1000);
        let mut sim = Sim::new(limits);
        sim.write(&[10]);
        sim.pass(true);
        sim.write(&[5000]);
        sim.pass(true);
        assert_eq!(sim.segments(), [(0, 10), (10, 5010)]);
        assert_eq!(
            sim.sent, 5010,
            "the open segment was not sent again just to close it"
        );
    }

    #[test]
    fn a_restart_resumes_the_same_plan() {
        let limits = Limits::new(100, 1000);
        let mut a = Sim::new(limits);
        a.write(&[30, 30]);
        a.pass(true);
        // Another process starts from the stored state and reads on from `stored`.
        let mut b = Sim::new(limits);
        b.stored = a.stored;
        b.boundary = a.stored.stored;
        b.cuts = Cuts::new(&b.stored, limits);
        a.write(&[600, 600]);
        b.write(&[600, 600]);
        a.pass(true);
        b.pass(true);
        assert_eq!(a.uploads[1..], b.uploads[..]);
        assert_eq!(b.segments(), [(0, 660), (660, 1260)]);
    }

    #[test]
    fn limits_keep_the_tail_within_a_segment() {
        assert_eq!(
            Limits::new(0, 0),
            Limits {
                tail_bytes: 1,
                segment_bytes: 1
            }
        );
        assert_eq!(
            Limits::new(10, 5),
            Limits {
                tail_bytes: 5,
                segment_bytes: 5
            }
        );
    }
}
