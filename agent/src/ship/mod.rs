//! Shipping what a job writes to durable storage: log files and TensorBoard event files.
//!
//! Data flows one way: **file → reader → chunk → sink**. [`discover`] expands the `--logs` globs;
//! [`identity`] tells files apart across renames; [`logs`] follows files and uploads compressed
//! chunks whose [`key`]s say which bytes they hold; [`checkpoint`] makes that exactly-once across
//! crashes; [`stored`] numbers a later attempt's generations after an earlier attempt's;
//! [`reassemble`] reads it all back for `periscope logs cat`. [`tfevents_mirror`] copies
//! event files so `tensorboard --logdir` works on the stored tree.
//!
//! The reader never knows which store it feeds, and the store never knows which file a chunk came
//! from beyond the key.

pub mod checkpoint;
pub mod discover;
pub mod follow;
pub mod identity;
pub mod key;
pub mod logs;
pub mod reassemble;
pub mod recognize;
pub mod source;
pub mod stored;
pub mod tfevents_mirror;

pub use discover::LogGlob;
pub use logs::{LogConfig, LogShipper, LogStats, ShipError, TickReport};
pub use tfevents_mirror::{MirrorConfig, TfeventsMirror};
