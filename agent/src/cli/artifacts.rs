//! `periscope artifacts push DIR`: push a folder as the next numbered save, and say what it did.

use std::path::PathBuf;
use std::process::ExitCode;

use periscope::artifacts::Restored;

use super::save_flags::{describe_restore, print_saves, PushTarget, PushTuning, SaveStore};
use super::Failure;

const AFTER_HELP: &str = "\
Layout: every file under DIR goes to <URL>/<experiment>/<worker>/artifacts/<n>/<relative path>, n
counting up per save, and <n>/manifest.json (each file's path, size and sha256, and what was skipped
and why) is written last: a save without a manifest is unfinished. Load a save back, verified, with
  periscope localize --source <URL>/<experiment>/<worker>/artifacts/<n>/

A push of content identical to the latest save makes no new save. A push that was killed continues
the same save with the state in --state-dir, without sending again the files it had stored. Symlinks
that leave DIR, sockets, FIFOs and devices are skipped and listed in the manifest.

A save holds each file as one read saw it: its size, mtime and inode must not change from the start
to the end of the read, else it is read again (3 times, then the push fails and no manifest is
written). Saves taken while a command runs (--artifacts-every, --artifacts-marker on exec, sidecar
and run) take the whole save again when a file keeps changing or vanishes. A checkpoint written in
place can stand still for a moment half-written: write it to a temporary name and rename it.

Examples:
  periscope artifacts push ./checkpoints --storage s3://ml-models/jobs --experiment-id job-42
  periscope artifacts push /models --storage file:///mnt/models --worker worker-1";

/// Save model artifacts to storage, verified and numbered. Invariant: exactly one subcommand.
#[derive(clap::Args)]
pub struct ArtifactsArgs {
    #[command(subcommand)]
    command: ArtifactsCommand,
}

/// The `artifacts` subcommands: `push`, and `restore` for a job's start (loading any save back
/// is `periscope localize`).
#[derive(clap::Subcommand)]
enum ArtifactsCommand {
    /// Upload every file under DIR as the next save (see --help for the layout).
    #[command(after_long_help = AFTER_HELP)]
    Push(FolderArgs),
    /// Bring the latest complete save of this experiment and worker into DIR, verified, when DIR
    /// is empty or missing (an initContainer's step before training resumes).
    #[command(after_long_help = RESTORE_HELP)]
    Restore(RestoreArgs),
}

const RESTORE_HELP: &str = "\
The latest complete save is the highest <URL>/<experiment>/<worker>/artifacts/<n>/ with a manifest;
every file is checked against it (size, sha256) as `periscope localize` checks a save. Files are
staged in DIR/.periscope-restore/ and moved into DIR only once all are verified; a restore killed
midway is started again (or finished) by the next one, so DIR never holds part of a save.

DIR that already holds files is kept as it is: those files were written since the last save (a
restarted container on the same volume). Running it again is harmless: a DIR that holds the save's
files says so and does nothing. With no complete save yet (a job's first start) it says so and
exits 0. One JSON line on stdout tells scripts what happened: {\"outcome\": \"restored\" |
\"already-there\" | \"kept-local\" | \"nothing-yet\", \"save\": N}.

Example (an initContainer before `periscope exec --artifacts /ckpt --artifacts-every 10m -- …`):
  periscope artifacts restore /ckpt --storage s3://ml-models/jobs --experiment-id job-42";

/// `artifacts push`'s flags. Invariant: one folder per command (one save).
#[derive(clap::Args)]
struct FolderArgs {
    /// The folder to save.
    #[arg(value_name = "DIR")]
    dir: PathBuf,
    #[command(flatten)]
    to: PushTarget,
    #[command(flatten)]
    tuning: PushTuning,
}

/// `artifacts restore`'s flags. Invariant: one folder, filled from one save.
#[derive(clap::Args)]
struct RestoreArgs {
    /// The folder to fill (made if missing).
    #[arg(value_name = "DIR")]
    dir: PathBuf,
    #[command(flatten)]
    from: SaveStore,
    /// Files (or parts of one large file) downloaded at once.
    #[arg(long, env = "PERISCOPE_ARTIFACTS_CONCURRENCY", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    artifacts_concurrency: u16,
}

/// Runs `periscope artifacts`.
pub async fn run(args: ArtifactsArgs) -> Result<ExitCode, Failure> {
    match args.command {
        ArtifactsCommand::Push(p) => {
            let target = p.to.open(periscope::job::Fallback::Worker0)?;
            let saves = target
                .push_all(&[p.dir], &p.to.state_dir, p.tuning.settings())
                .await?;
            print_saves(&saves);
            Ok(ExitCode::SUCCESS)
        }
        ArtifactsCommand::Restore(r) => {
            // As `artifacts push` names it; in a pod, JOB_COMPLETION_INDEX or --worker names it.
            let target = r.from.open(periscope::job::Fallback::Worker0)?;
            let concurrency = usize::from(r.artifacts_concurrency);
            let restored = target.restore(&r.dir, concurrency).await?;
            eprintln!(
                "{}",
                describe_restore(&r.dir, &restored, &target.shown_base())
            );
            println!("{}", restore_json(&restored));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The one JSON line scripts read: what the restore did, and which save.
fn restore_json(restored: &Restored) -> serde_json::Value {
    let (outcome, save) = match restored {
        Restored::Loaded { save, .. } => ("restored", Some(*save)),
        Restored::AlreadyThere { save } => ("already-there", Some(*save)),
        Restored::KeptLocal { latest, .. } => ("kept-local", *latest),
        Restored::NothingYet => ("nothing-yet", None),
    };
    serde_json::json!({ "outcome": outcome, "save": save })
}
