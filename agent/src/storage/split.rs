//! Where a large object is cut into byte ranges, and whether cutting it pays.
//!
//! A large object is first asked for whole, by one request: the lead. Whether more requests
//! would finish it sooner depends on the server. A store that serves a range by reading just
//! that range (S3, GCS, Azure, s3s-fs) answers each request within a round trip or so, and
//! parallel ranges multiply the rate one connection gets. A server that reads the whole object
//! for every range (moto, some gateways over slow backends) answers each only after a pass over
//! all of it, one request at a time: there every extra range adds a whole object's work, and
//! one request is fastest. The lead measures both costs on its own request, the wait for its
//! first byte and its rate since, and hands the rest to helper ranges only when moving the rest
//! alone would take clearly longer than a helper needs just to start ([`rest`]).
//!
//! Cutting later, not at once, costs a store of the first kind one short measuring window
//! ([`MEASURE_FOR`]) past the first byte, while the lead already streams. This module only
//! computes; it does no IO.

use std::ops::Range;
use std::time::Duration;

/// Objects larger than this may be fetched in parallel ranges; smaller ones are one request.
pub const SPLIT_ABOVE: u64 = 16 << 20;
/// The smallest ranged request; below this, a request's own cost outweighs the parallelism.
pub const MIN_PART_SIZE: u64 = 8 << 20;
/// How many waits for a first byte the rest must take alone before helpers are worth asking.
/// A server that reads the whole object per request waits about as long as it then streams
/// (moto: 0.7 s, then 1 GiB in 1.1–1.5 s); a store that serves ranges answers in a round trip
/// and streams 1 GiB for seconds (a ratio in the hundreds). The cost of the margin: an object
/// whose rest takes under four waits is fetched alone, losing at most those four waits.
pub const WAITS_WORTH_SPLITTING: u32 = 4;
/// How long the lead streams after its first byte before its rate is taken. Short, because
/// helpers wait for the decision; long enough for a rate that is not one lucky chunk.
pub const MEASURE_FOR: Duration = Duration::from_millis(25);

/// Cuts bytes `span` into about `count` contiguous pieces of at least [`MIN_PART_SIZE`] (the last
/// may be shorter), every boundary inside `span` on a multiple of `align` counted from the
/// object's start, so each piece but the first starts on a part boundary. Invariant of the
/// result: contiguous pieces that start at `span.start` and end at `span.end`; empty for an
/// empty span.
pub fn pieces(span: Range<u64>, count: usize, align: u64) -> Vec<Range<u64>> {
    let align = align.max(1);
    let part = (span.end.saturating_sub(span.start))
        .div_ceil(count.max(1) as u64)
        .max(MIN_PART_SIZE);
    let mut out = Vec::new();
    let mut start = span.start;
    while start < span.end {
        let end = start
            .saturating_add(part)
            .div_ceil(align)
            .saturating_mul(align)
            .min(span.end);
        out.push(start..end);
        start = end;
    }
    out
}

/// Whether an object of `size` bytes can be fetched in more than one range with `concurrency`
/// connections and ranges aligned to `align`: only such an object gets a lead that may split.
/// One connection, or a part as large as the object, leaves it one whole request.
pub fn splittable(size: u64, concurrency: usize, align: u64) -> bool {
    size > SPLIT_ABOVE && pieces(0..size, concurrency, align).len() > 1
}

/// What the lead request has seen of its own response. Invariant: `streaming` counts from the
/// first byte, and `received` bytes arrived within it.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// From sending the request to its first body byte: what a helper would wait to start.
    pub first_byte: Duration,
    pub streaming: Duration,
    pub received: u64,
}

/// A lead's decision to split. Invariant: `helpers` are contiguous, end at the object's end,
/// start on multiples of the alignment, and the first starts at `cut`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rest {
    /// Where the lead stops; it lies past what the lead had received when it decided.
    pub cut: u64,
    pub helpers: Vec<Range<u64>>,
}

/// The lead's decision for an object of `size` bytes: `None` to fetch the rest alone, or where
/// the lead stops and the ranges helpers fetch from there to the end. Splitting
/// pays only when moving the rest at the lead's rate takes several times a request's wait for
/// its first byte ([`WAITS_WORTH_SPLITTING`]): a helper gives nothing before that wait, and a
/// server whose wait grows with the object (one that reads all of it per range) makes that wait
/// about as long as the transfer.
pub fn rest(size: u64, pace: Pace, concurrency: usize, align: u64) -> Option<Rest> {
    let remaining = size.checked_sub(pace.received).filter(|r| *r > 0)?;
    // A lead that has received nothing yet is as slow as it gets: helpers are the only help.
    let alone = if pace.received == 0 {
        Duration::MAX
    } else {
        let seconds = pace.streaming.as_secs_f64() * remaining as f64 / pace.received as f64;
        Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX)
    };
    if alone <= pace.first_byte.saturating_mul(WAITS_WORTH_SPLITTING) {
        return None;
    }
    let mut pieces = pieces(pace.received..size, concurrency, align);
    if pieces.len() < 2 {
        return None;
    }
    let lead = pieces.remove(0);
    Some(Rest {
        cut: lead.end,
        helpers: pieces,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn covers(pieces: &[Range<u64>], span: Range<u64>) -> bool {
        let mut at = span.start;
        for r in pieces {
            if r.start != at || r.end <= r.start {
                return false;
            }
            at = r.end;
        }
        at == span.end
    }

    #[test]
    fn a_small_object_is_never_split() {
        assert!(!splittable(0, 8, 1));
        assert!(!splittable(SPLIT_ABOVE, 8, 1));
        assert!(splittable(SPLIT_ABOVE + 1, 8, 1));
    }

    #[test]
    fn one_connection_or_one_piece_is_not_splittable() {
        // A concurrency of 0 is taken as 1, never as a zero divisor.
        for concurrency in [0, 1] {
            assert!(!splittable(100 << 20, concurrency, 1));
        }
        // A part larger than the object leaves one piece; a huge one does not overflow.
        assert!(!splittable(40 << 20, 8, 64 << 20));
        assert!(!splittable(40 << 20, 8, u64::MAX));
    }

    #[test]
    fn a_large_object_is_cut_into_one_piece_per_connection() {
        let size = (1 << 30) + 4096;
        let got = pieces(0..size, 8, 1);
        assert_eq!(got.len(), 8);
        assert!(covers(&got, 0..size));
    }

    #[test]
    fn pieces_never_shrink_below_the_minimum() {
        let size = SPLIT_ABOVE + 1;
        let got = pieces(0..size, 64, 1);
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(covers(&got, 0..size));
        assert!(got[..2].iter().all(|r| r.end - r.start == MIN_PART_SIZE));
    }

    #[test]
    fn pieces_end_on_part_boundaries_even_from_an_unaligned_start() {
        let part = 5 << 20;
        for span in [
            0..(1u64 << 30) + 4096,
            0..100 << 20,
            0..(40 << 20) + 1,
            12_345..(300 << 20) + 7,
        ] {
            let got = pieces(span.clone(), 8, part);
            assert!(covers(&got, span.clone()), "{span:?}: {got:?}");
            for r in got.iter().filter(|r| r.end != span.end) {
                assert_eq!(r.end % part, 0, "{span:?}: {got:?}");
            }
        }
        assert!(pieces(7..7, 8, 1).is_empty());
    }

    /// A store that serves ranges cheaply: 30 ms to the first byte, 100 MB/s per connection.
    #[test]
    fn a_fast_answering_store_gets_helpers_for_the_rest() {
        let size = 1u64 << 30;
        let pace = Pace {
            first_byte: 30 * MS,
            streaming: 25 * MS,
            received: 2_500_000,
        };
        let Rest { cut, helpers } =
            rest(size, pace, 8, 1).expect("1 GiB at 100 MB/s is worth splitting");
        assert_eq!(helpers.len(), 7);
        assert!(cut > pace.received);
        assert_eq!(helpers[0].start, cut);
        assert!(covers(&helpers, cut..size));
        // Even a first byte a whole second late (a tail latency) does not stop the split:
        // the rest alone would take ten.
        let late = Pace {
            first_byte: 1000 * MS,
            ..pace
        };
        assert!(rest(size, late, 8, 1).is_some());
    }

    /// A server that reads the whole object before it answers, as moto measured here: 760 ms
    /// to the first byte of 1 GiB, then 740 MB/s. Each helper would cost another 760 ms of the
    /// server's time.
    #[test]
    fn a_server_that_reads_the_whole_object_first_is_left_one_request() {
        let pace = Pace {
            first_byte: 760 * MS,
            streaming: 25 * MS,
            received: 18_513_920,
        };
        assert_eq!(rest(1 << 30, pace, 8, 1), None);
        // Half that rate still leaves the rest under four waits.
        let slower = Pace {
            streaming: 50 * MS,
            ..pace
        };
        assert_eq!(rest(1 << 30, slower, 8, 1), None);
    }

    #[test]
    fn a_lead_that_received_nothing_yet_splits() {
        let pace = Pace {
            first_byte: 5 * MS,
            streaming: 25 * MS,
            received: 0,
        };
        let Rest { cut, helpers } = rest(200 << 20, pace, 4, 1).expect("a stalled lead needs help");
        assert_eq!(helpers.last().map(|r| r.end), Some(200 << 20));
        assert!(cut > 0);
    }

    #[test]
    fn nothing_left_or_too_little_left_is_not_split() {
        // A slow lead (10 MB/s), so the rate alone would always ask for helpers.
        let pace = Pace {
            first_byte: MS,
            streaming: Duration::from_secs(10),
            received: 100 << 20,
        };
        assert_eq!(rest(100 << 20, pace, 8, 1), None);
        // 4 MiB left makes one piece: nothing to hand over.
        assert_eq!(rest(104 << 20, pace, 8, 1), None);
        // One connection never has helpers.
        assert_eq!(rest(1 << 30, pace, 1, 1), None);
    }

    #[test]
    fn helper_ranges_start_on_part_boundaries() {
        let part = 8 << 20;
        let pace = Pace {
            first_byte: MS,
            streaming: 25 * MS,
            received: 3_000_001,
        };
        let size = (512 << 20) + 5;
        let Rest { cut, helpers } = rest(size, pace, 8, part).expect("worth splitting");
        assert_eq!(cut % part, 0);
        assert!(helpers.iter().all(|r| r.start % part == 0));
        assert!(covers(&helpers, cut..size));
    }
}
