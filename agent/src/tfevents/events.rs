//! Events and scalars from one event file, resumably: the [`RecordReader`] plus `Event` decoding
//! and the per-file [`ScalarExtractor`].
//!
//! A [`Position`] (offset of the next unread record and the tag kinds seen before it) is all a
//! caller must checkpoint to resume a file later without losing or repeating a scalar. This module
//! never prints and never decides what damage means for an exit code.

use std::fs::File;
use std::io::{self, Read, Seek};
use std::path::Path;

use prost::Message;
use serde::{Deserialize, Serialize};

use super::proto::Event;
use super::reader::{Damage, DamageKind, Next, RecordReader};
use super::scalar::{session_start_step, Scalar, ScalarExtractor};

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
    pub event: Event,
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

/// Decodes events from one file. Invariant: `position()` always describes the state right after
/// the last item returned.
#[derive(Debug)]
pub struct EventReader<R = File> {
    records: RecordReader<R>,
    tags: ScalarExtractor,
    bad_events: u64,
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
            tags: position.tags,
            bad_events: 0,
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
            tags: self.tags.clone(),
        }
    }

    /// Damaged records skipped so far (bad data CRC or undecodable).
    pub fn skipped(&self) -> u64 {
        self.records.skipped() + self.bad_events
    }

    /// The next event, or why there is none now.
    pub fn next_event(&mut self) -> io::Result<EventItem> {
        let record = match self.records.next_record()? {
            Next::Record(r) => r,
            Next::Skipped(d) => return Ok(EventItem::Skipped(d)),
            Next::Pending => return Ok(EventItem::Pending),
            Next::Stopped(d) => return Ok(EventItem::Stopped(d)),
        };
        let (offset, end) = (record.offset, record.end);
        let event = match Event::decode(record.data) {
            Ok(event) => event,
            Err(e) => {
                tracing::debug!(offset, error = %e, "record is not an Event");
                self.bad_events += 1;
                return Ok(EventItem::Skipped(Damage {
                    offset,
                    kind: DamageKind::BadEvent,
                }));
            }
        };
        let mut scalars = Vec::new();
        self.tags.extract(&event, &mut scalars);
        let session_start = session_start_step(&event);
        Ok(EventItem::Event(ReadEvent {
            offset,
            end,
            event,
            scalars,
            session_start,
        }))
    }
}
