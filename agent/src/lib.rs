//! Periscope: the library behind the `periscope` binary.
//!
//! Each capability lives in its own folder and owns one direction of data flow:
//!
//! * [`localize`]: source → stage → publish. Fetches code into `/code`, atomically and safely.
//! * [`tfevents`]: TFRecord framing and TensorBoard `Event` messages, read incrementally and written.
//! * [`metrics`]: source → durable queue → metastore, for tracking metrics.
//!
//! Shared pieces have one home each: [`error`] (how failures are classified for exit codes),
//! [`redact`] (how URLs and secrets are shown), [`retry`] (the one retry policy), [`storage`]
//! (the one place that builds object stores), and [`tls`] (the crypto provider of HTTPS clients).
//!
//! The library never prints. Output for people (tables, JSONL, progress bars) belongs to the CLI
//! layer in `main.rs`; diagnostics go through `tracing`.

pub mod artifacts;
pub mod error;
pub mod exec;
pub mod fsutil;
pub mod install;
pub mod job;
pub mod lifecycle;
pub mod localize;
pub mod metrics;
pub mod parallel;
pub mod redact;
pub mod retry;
pub mod run;
pub mod ship;
pub mod sidecar;
pub mod storage;
pub mod tfevents;
pub mod tls;
