//! The sidecar: everything that runs beside the training command until it ends, then drains.
//!
//! * [`assemble`]: a [`Sidecar`] built from plain [`Settings`], the one way every command
//!   (`sidecar`, `run`) builds one, started and finished;
//! * [`settings`]: what a sidecar is told, as plain values;
//! * [`shipping`]: the loop that ticks the log and tf.events shippers;
//! * [`metrics`]: the metrics pipeline's thread and the metastore it opens;
//! * [`health`]: `/healthz`, `/readyz` and `/metrics`;
//! * [`serve`]: the listeners of the probes and of the MLflow-compatible endpoint, each with its
//!   own timeouts and connection limit;
//! * [`claim`]: the claim on the worker's folder in storage and its lease, so two pods never
//!   write one at once, and a pod that replaces a stopped or lost one takes it over;
//! * [`watch`]: change notifications that wake the loops;
//! * [`error`]: why a sidecar could not start or finish.
//!
//! Every loop follows [`crate::lifecycle`]. This module never prints.

pub mod assemble;
pub mod claim;
pub mod error;
pub mod health;
pub mod metrics;
pub mod serve;
pub mod settings;
pub mod shipping;
pub mod watch;

pub use assemble::{Report, Sidecar};
pub use error::SidecarError;
pub use serve::Limits;
pub use settings::{LogSettings, MetricsSettings, Settings};
