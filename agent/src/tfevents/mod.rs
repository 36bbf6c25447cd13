//! TensorBoard event files: TFRecord framing, `Event` messages, scalars, and a writer.
//!
//! Data flows one way, file → records → events → scalars, and each step has its own file:
//!
//! * [`crc`]: the masked CRC32C; [`framing`]: one frame's bytes (no I/O).
//! * [`reader`]: the resumable, incremental [`RecordReader`] that applies the damage rules to a
//!   file that may still be growing, and reports record boundaries and the resume offset.
//! * [`proto`]: the hand-written prost messages; [`scalar`]: which values are scalars.
//! * [`events`]: [`EventReader`], records decoded into events and scalars, with a checkpointable
//!   [`Position`].
//! * [`discover`]: event files under a folder; [`writer`]: [`EventWriter`].
//!
//! This module never prints and never knows where its output goes (terminal, object store,
//! metastore): that belongs to its callers.

pub mod crc;
pub mod discover;
pub mod error;
pub mod events;
pub mod framing;
pub mod proto;
pub mod reader;
pub mod scalar;
pub mod writer;

pub use discover::{discover, EventFile};
pub use error::TfeventsError;
pub use events::{EventItem, EventReader, Position, ReadEvent};
pub use reader::{Damage, DamageKind, Next, RecordReader, RecordRef};
pub use scalar::{Scalar, ScalarExtractor};
pub use writer::{EventWriter, ScalarValue};

#[cfg(test)]
mod tests;
