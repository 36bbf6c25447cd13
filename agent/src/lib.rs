//! Periscope: the library behind the `periscope` binary.
//!
//! Capabilities, a folder each, each owning one direction of data flow:
//!
//! * [`localize`]: source → stage → publish. Fetches code into `/code`, atomically and safely.
//! * [`ship`]: file → reader → chunk → storage, for logs and TensorBoard event files.
//! * [`metrics`]: source → durable queue → metastore, for tracking metrics (SQLite, Submarine's
//!   MySQL, MLflow), including the MLflow-compatible endpoint scripts log to.
//! * [`artifacts`]: a folder → a numbered, verified save in storage.
//! * [`exec`]: runs the training command, tees its output, forwards signals, records its exit.
//! * [`sidecar`]: assembles shipping, metrics, health and saves into one sidecar, the one way
//!   `periscope sidecar` and `periscope run` build it; [`run`] adds localize and exec for VMs.
//! * [`tfevents`]: TFRecord framing and TensorBoard `Event` messages (its own crate).
//! * [`install`]: copies this binary onto a shared volume.
//!
//! Shared machinery sits below its users, a home each: [`storage`] (building object stores, and
//! the ranged, verified download engine), [`net`] (TLS and CA bundles of every HTTPS client),
//! [`lifecycle`] (the one stop and drain state machine), [`localized`] (the
//! `localized.json` contract between localize and those who read what it fetched), [`job`] (who this process works for),
//! [`error`] (how failures are classified for exit codes), [`redact`] (how URLs and secrets are
//! shown), [`retry`] (the one retry policy), [`parallel`] (the worker pool for blocking jobs) and
//! [`fsutil`] (atomic writes).
//!
//! The library never prints. Output for people (tables, JSONL, progress bars) belongs to the CLI
//! layer (`main.rs` and `cli/`); diagnostics go through `tracing`.

pub mod artifacts;
pub mod error;
pub mod exec;
pub mod fsutil;
pub mod install;
pub mod job;
pub mod lifecycle;
pub mod localize;
pub mod localized;
pub mod metrics;
pub mod net;
pub mod parallel;
pub mod redact;
pub mod retry;
pub mod run;
pub mod ship;
pub mod sidecar;
pub mod storage;
pub mod tfevents;
