//! `periscope artifacts push DIR`: push a folder as the next numbered save, and say what it did.

use std::path::PathBuf;
use std::process::ExitCode;

use super::save_flags::{print_saves, PushTarget, PushTuning};
use super::Failure;

const AFTER_HELP: &str = "\
Layout: every file under DIR goes to <URL>/<experiment>/<worker>/artifacts/<n>/<relative path>, n
counting up per save, and <n>/manifest.json (each file's path, size and sha256, and what was skipped
and why) is written last: a save without a manifest is unfinished. Load a save back, verified, with
  periscope localize --source <URL>/<experiment>/<worker>/artifacts/<n>/

A push of content identical to the latest save makes no new save. A push that was killed continues
the same save with the state in --state-dir, without sending again the files it had stored. Symlinks
that leave DIR, sockets, FIFOs and devices are skipped and listed in the manifest.

Examples:
  periscope artifacts push ./checkpoints --storage s3://ml-models/jobs --experiment-id job-42
  periscope artifacts push /models --storage file:///mnt/models --worker worker-1";

/// Save model artifacts to storage, verified and numbered. Invariant: exactly one subcommand.
#[derive(clap::Args)]
pub struct ArtifactsArgs {
    #[command(subcommand)]
    command: ArtifactsCommand,
}

/// The `artifacts` subcommands: `push` (loading a save back is `periscope localize`).
#[derive(clap::Subcommand)]
enum ArtifactsCommand {
    /// Upload every file under DIR as the next save (see --help for the layout).
    #[command(after_long_help = AFTER_HELP)]
    Push(PushArgs),
}

/// `artifacts push`'s flags. Invariant: one folder per push (one save).
#[derive(clap::Args)]
struct PushArgs {
    /// The folder to save.
    #[arg(value_name = "DIR")]
    dir: PathBuf,
    #[command(flatten)]
    to: PushTarget,
    #[command(flatten)]
    tuning: PushTuning,
}

/// Runs `periscope artifacts`.
pub async fn run(args: ArtifactsArgs) -> Result<ExitCode, Failure> {
    match args.command {
        ArtifactsCommand::Push(p) => {
            let target = p.to.open()?;
            let saves = target
                .push_all(&[p.dir], &p.to.state_dir, p.tuning.settings())
                .await?;
            print_saves(&saves);
            Ok(ExitCode::SUCCESS)
        }
    }
}
