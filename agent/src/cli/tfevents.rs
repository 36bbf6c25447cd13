//! `periscope tfevents` (stub: to be written).

use std::process::ExitCode;

use periscope::error::ErrorClass;

use super::Failure;

/// Read TensorBoard event files.
#[derive(clap::Args)]
pub struct TfeventsArgs {}

/// Runs `periscope tfevents`.
pub fn run(_args: TfeventsArgs) -> Result<ExitCode, Failure> {
    Err(Failure::new(
        ErrorClass::Internal,
        "tfevents is not implemented yet",
        None,
    ))
}
