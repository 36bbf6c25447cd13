//! `periscope install DIR`: copy this binary into a shared volume for the pod's other containers.

use std::path::PathBuf;
use std::process::ExitCode;

use super::Failure;

const AFTER_HELP: &str = "\
The Periscope image holds only this static binary, and has no shell or cp. An initContainer runs
`periscope install /periscope/bin` onto a shared emptyDir, so that the main container, whatever its
image, can run `/periscope/bin/periscope exec -- CMD`. The copy is written atomically with mode 0755.";

/// Copy the running periscope binary into a folder (for the pod's main container).
#[derive(clap::Args)]
#[command(after_long_help = AFTER_HELP)]
pub struct InstallArgs {
    /// Folder to copy the binary into, as DIR/periscope; created if missing.
    #[arg(value_name = "DIR")]
    dir: PathBuf,
}

/// Runs `periscope install`.
pub fn run(args: InstallArgs) -> Result<ExitCode, Failure> {
    let target = periscope::install::install_self(&args.dir)?;
    println!("installed {}", target.display());
    Ok(ExitCode::SUCCESS)
}
