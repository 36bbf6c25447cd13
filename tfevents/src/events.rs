//! Events and scalars from one event file, resumably: the [`RecordReader`] plus `Event` decoding
//! (by [`wire`] where it can vouch for a record, else by prost) and the per-file
//! [`ScalarExtractor`].
//!
//! A [`Position`] (offset of the next unread record and the tag kinds seen before it) is all a
//! caller must checkpoint to resume a file later without losing or repeating a scalar. This module
//! never prints and never decides what damage means for an exit code.

use std::fs::File;
use std::io::{self, Read, Seek};
use std::path::Path;

use prost::Message;
use serde::{Deserialize, Serialize};

use crate::proto::Event;
use crate::reader::{Damage, DamageKind, Next, RecordReader, RecordRef};
use crate::scalar::{number_of, session_start_step, Scalar, ScalarExtractor, ScalarRef, TagKind};
use crate::wire::{self, Head, WireTag, WireValue};

/// Where to resume reading a file. Invariant: `offset` is a record boundary and `tags` holds the
/// kinds of every tag seen in records before it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Position {
    pub offset: u64,
    pub tags: ScalarExtractor,
}

/// One decoded record, with where it lies and what it means.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadEvent {
    /// The record's frame is `offset..end` in the file.
    pub offset: u64,
    pub end: u64,
    /// The scalars in this event, in order.
    pub scalars: Vec<Scalar>,
    /// `Some(step)` for a `SessionLog` START: points at or after `step` read earlier are stale.
    pub session_start: Option<i64>,
}

/// What [`EventReader::next_event`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum EventItem {
    Event(ReadEvent),
    /// A damaged record (bad data CRC, or not an Event) was skipped; reading goes on.
    Skipped(Damage),
    /// Nothing more for now.
    Pending,
    /// The framing is broken; nothing more will come from this file.
    Stopped(Damage),
}

/// What [`EventReader::next_scalars`] found: [`EventItem`] with the record's scalars borrowed
/// from the reader.
#[derive(Debug)]
pub enum ScalarItem<'a> {
    Event(RecordScalars<'a>),
    Skipped(Damage),
    Pending,
    Stopped(Damage),
}

/// One decoded record's scalars, borrowed from the reader until its next call. Invariant: the
/// same scalars, in the same order, as [`ReadEvent::scalars`] for this record.
#[derive(Debug)]
pub struct RecordScalars<'a> {
    /// The record's frame is `offset..end` in the file.
    pub offset: u64,
    pub end: u64,
    /// `Some(step)` for a `SessionLog` START: points at or after `step` read earlier are stale.
    pub session_start: Option<i64>,
    found: Found<'a>,
}

/// Where a record's scalars are: tag ranges into the record (the common, zero-copy case), or
/// scalars decoded through prost.
#[derive(Debug)]
enum Found<'a> {
    Wire {
        data: &'a [u8],
        head: Head,
        scalars: &'a [WireScalar],
        known: &'a KnownTags,
    },
    Decoded(&'a [Scalar]),
}

/// A scalar found by [`wire`](crate::wire). Invariant: `tag` is an index into the decoder's
/// [`KnownTags`], or a range of the record holding valid UTF-8 (checked when it was decoded).
#[derive(Debug, Clone, PartialEq)]
struct WireScalar {
    tag: WireTag,
    value: f64,
}

/// How many tags a decoder remembers by their bytes: plenty for the usual handful of series per
/// file; a file with more reads the others through the [`ScalarExtractor`] (correct, slower).
const KNOWN_TAGS: usize = 64;

/// The first tags a decoder has seen, by their bytes, with their kinds, so that a record's tags
/// need neither a UTF-8 check nor a hash lookup. Invariant: at most [`KNOWN_TAGS`] distinct
/// entries, each with the kind the extractor holds for it (a kind never changes); entries are
/// only appended, so indices stay valid.
#[derive(Debug, Default)]
struct KnownTags(Vec<(String, TagKind)>);

impl KnownTags {
    fn find(&self, tag: &[u8]) -> Option<usize> {
        self.0.iter().position(|(t, _)| t.as_bytes() == tag)
    }

    fn tag(&self, i: usize) -> &str {
        &self.0[i].0
    }

    fn kind(&self, i: usize) -> TagKind {
        self.0[i].1
    }

    /// Remembers `tag` if there is room and it is not known yet.
    fn learn(&mut self, tag: &str, kind: TagKind) {
        if self.0.len() < KNOWN_TAGS && self.find(tag.as_bytes()).is_none() {
            self.0.push((tag.to_owned(), kind));
        }
    }
}

impl<'a> RecordScalars<'a> {
    /// How many scalars the record holds.
    pub fn len(&self) -> usize {
        match &self.found {
            Found::Wire { scalars, .. } => scalars.len(),
            Found::Decoded(scalars) => scalars.len(),
        }
    }

    /// True when the record holds no scalar.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The scalars, in order.
    pub fn iter(&self) -> impl Iterator<Item = ScalarRef<'a>> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }

    /// True when the record was decoded by [`wire`](crate::wire), not prost.
    #[cfg(test)]
    pub(crate) fn by_wire(&self) -> bool {
        matches!(self.found, Found::Wire { .. })
    }

    fn get(&self, i: usize) -> ScalarRef<'a> {
        match self.found {
            Found::Wire {
                data,
                head,
                scalars,
                known,
            } => ScalarRef {
                tag: match &scalars[i].tag {
                    WireTag::Known(k) => known.tag(*k),
                    // The invariant of `WireScalar`: the range was checked to be UTF-8.
                    WireTag::New(r) => std::str::from_utf8(&data[r.clone()])
                        .expect("tag ranges are checked to be UTF-8 when decoded"),
                },
                step: head.step,
                wall_time: head.wall_time,
                value: scalars[i].value,
            },
            Found::Decoded(scalars) => scalars[i].as_ref(),
        }
    }
}

/// Decodes events from one file. Invariant: `position()` always describes the state right after
/// the last item returned.
#[derive(Debug)]
pub struct EventReader<R = File> {
    records: RecordReader<R>,
    decoder: Decoder,
}

/// Turns records into scalars. Not generic over the source, so the per-record work is compiled
/// once, in this crate and with its optimization settings, whatever the caller. Invariant: `tags`
/// holds the kinds of every tag in the records decoded so far, and `known` agrees with it;
/// `values`, `wire` and `decoded` are scratch space for the last record.
#[derive(Debug)]
pub(crate) struct Decoder {
    tags: ScalarExtractor,
    known: KnownTags,
    bad_events: u64,
    values: Vec<WireValue>,
    wire: Vec<WireScalar>,
    decoded: Vec<Scalar>,
}

impl EventReader<File> {
    /// Opens `path` and resumes at `position` (`Position::default()` for a new file).
    pub fn open(path: &Path, position: Position) -> io::Result<Self> {
        Self::new(File::open(path)?, position)
    }
}

impl<R: Read + Seek> EventReader<R> {
    /// Wraps a source, resuming at `position`.
    pub fn new(source: R, position: Position) -> io::Result<Self> {
        Ok(EventReader {
            records: RecordReader::new(source, position.offset)?,
            decoder: Decoder::new(position.tags),
        })
    }

    /// The record layer, to set the tail grace or declare the file complete.
    pub fn records_mut(&mut self) -> &mut RecordReader<R> {
        &mut self.records
    }

    /// The record layer, for offsets and counts.
    pub fn records(&self) -> &RecordReader<R> {
        &self.records
    }

    /// Where to resume after the items returned so far.
    pub fn position(&self) -> Position {
        Position {
            offset: self.records.offset(),
            tags: self.decoder.tags.clone(),
        }
    }

    /// Damaged records skipped so far (bad data CRC or undecodable).
    pub fn skipped(&self) -> u64 {
        self.records.skipped() + self.decoder.bad_events
    }

    /// The next event, or why there is none now.
    pub fn next_event(&mut self) -> io::Result<EventItem> {
        Ok(match self.next_scalars()? {
            ScalarItem::Event(record) => EventItem::Event(ReadEvent {
                offset: record.offset,
                end: record.end,
                scalars: record.iter().map(|s| s.to_scalar()).collect(),
                session_start: record.session_start,
            }),
            ScalarItem::Skipped(d) => EventItem::Skipped(d),
            ScalarItem::Pending => EventItem::Pending,
            ScalarItem::Stopped(d) => EventItem::Stopped(d),
        })
    }

    /// The next event's scalars, borrowed until the next call, or why there is none now. The same
    /// items as [`next_event`](Self::next_event), without allocating per record.
    pub fn next_scalars(&mut self) -> io::Result<ScalarItem<'_>> {
        Ok(match self.records.next_record()? {
            Next::Record(r) => self.decoder.decode(r),
            Next::Skipped(d) => ScalarItem::Skipped(d),
            Next::Pending => ScalarItem::Pending,
            Next::Stopped(d) => ScalarItem::Stopped(d),
        })
    }
}

impl Decoder {
    /// A decoder that resumes with the tag kinds `tags`.
    pub(crate) fn new(tags: ScalarExtractor) -> Self {
        Decoder {
            tags,
            known: KnownTags::default(),
            bad_events: 0,
            values: Vec::new(),
            wire: Vec::new(),
            decoded: Vec::new(),
        }
    }

    /// The tag kinds seen so far.
    #[cfg(test)]
    pub(crate) fn tags(&self) -> &ScalarExtractor {
        &self.tags
    }

    /// One good record's scalars, or the damage of a record that is not an `Event`.
    pub(crate) fn decode<'a>(&'a mut self, record: RecordRef<'a>) -> ScalarItem<'a> {
        let (offset, end, data) = (record.offset, record.end, record.data);
        let known = &self.known;
        if let Some(head) = wire::decode_event(data, |tag| known.find(tag), &mut self.values) {
            self.wire.clear();
            for v in &self.values {
                let number = match &v.tag {
                    // A known tag's kind is the extractor's, which the value cannot change.
                    WireTag::Known(k) => number_of(self.known.kind(*k), v.kind),
                    WireTag::New(r) => {
                        // The invariant of `WireValue`: `decode_event` checked every new tag.
                        let tag = std::str::from_utf8(&data[r.clone()])
                            .expect("tag ranges are checked to be UTF-8 when decoded");
                        let number = self.tags.number(tag, v.kind, v.declares);
                        if let Some(kind) = self.tags.kind(tag) {
                            self.known.learn(tag, kind);
                        }
                        number
                    }
                };
                if let Some(value) = number {
                    self.wire.push(WireScalar {
                        tag: v.tag.clone(),
                        value,
                    });
                }
            }
            return ScalarItem::Event(RecordScalars {
                offset,
                end,
                session_start: None,
                found: Found::Wire {
                    data,
                    head,
                    scalars: &self.wire,
                    known: &self.known,
                },
            });
        }
        let event = match Event::decode(data) {
            Ok(event) => event,
            Err(e) => {
                tracing::debug!(offset, error = %e, "record is not an Event");
                self.bad_events += 1;
                return ScalarItem::Skipped(Damage {
                    offset,
                    kind: DamageKind::BadEvent,
                });
            }
        };
        self.decoded.clear();
        self.tags.extract(&event, &mut self.decoded);
        ScalarItem::Event(RecordScalars {
            offset,
            end,
            session_start: session_start_step(&event),
            found: Found::Decoded(&self.decoded),
        })
    }
}
