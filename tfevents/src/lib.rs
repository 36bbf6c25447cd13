//! TensorBoard event files: TFRecord framing, `Event` messages, scalars, and a writer.
//!
//! Its own crate (`periscope-tfevents`) so that the release profile can build it for speed while
//! the rest of the static binary is built for size; the `periscope` crate re-exports it as
//! `periscope::tfevents`.
//!
//! Data flows one way, file → records → events → scalars, and each step has its own file:
//!
//! * [`crc`]: the masked CRC32C; [`framing`]: one frame's bytes (no I/O).
//! * [`reader`]: the resumable, incremental [`RecordReader`] that applies the damage rules to a
//!   file that may still be growing, and reports record boundaries and the resume offset.
//! * [`proto`]: the hand-written prost messages; [`scalar`]: which values are scalars.
//! * `wire`: a zero-copy reader of the common `Event` records, which leaves every other record
//!   to prost.
//! * [`events`]: [`EventReader`], records decoded into events and scalars (owned, or borrowed
//!   without allocating), with a checkpointable [`Position`].
//! * [`series`]: per-tag summaries of scalar series.
//! * [`discover`]: event files under a folder; [`writer`]: [`EventWriter`].
//!
//! This crate never prints and never knows where its output goes (terminal, object store,
//! metastore): that belongs to its callers.

pub mod crc;
pub mod discover;
pub mod error;
pub mod events;
pub mod framing;
pub mod proto;
pub mod reader;
pub mod scalar;
pub mod series;
mod wire;
pub mod writer;

pub use discover::{discover, discover_in, EventFile, Scope, Search};
pub use error::TfeventsError;
pub use events::{EventItem, EventReader, Position, ReadEvent, RecordScalars, ScalarItem};
pub use reader::{Damage, DamageKind, DamageSummary, Next, RecordReader, RecordRef};
pub use scalar::{Scalar, ScalarExtractor, ScalarRef};
pub use series::{Series, SeriesSummary};
pub use writer::{EventWriter, ScalarValue};

#[cfg(test)]
mod tests;
