//! The sidecar: everything that runs beside the training command until it ends, then drains.
//!
//! * [`assemble`]: a [`Sidecar`] built from plain [`Settings`], the one way every command
//!   (`sidecar`, `run`) builds one, started and finished;
//! * [`settings`]: what a sidecar is told, as plain values;
//! * [`shipping`]: the loop that ticks the log and tf.events shippers;
//! * [`metrics`]: the metrics pipeline's thread and the metastore it opens;
//! * [`health`]: `/healthz`, `/readyz` and `/metrics`;
//! * [`watch`]: change notifications that wake the loops;
//! * [`error`]: why a sidecar could not start or finish.
//!
//! Every loop follows [`crate::lifecycle`]. This module never prints.

pub mod assemble;
pub mod error;
pub mod health;
pub mod metrics;
pub mod settings;
pub mod shipping;
pub mod watch;

pub use assemble::{Report, Sidecar};
pub use error::SidecarError;
pub use settings::{LogSettings, MetricsSettings, Settings};
