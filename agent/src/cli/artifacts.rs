//! `periscope artifacts push DIR`, and the `--artifacts DIR` flags that `sidecar`, `run` and
//! `exec` share: push each folder as a numbered save, and print what each push did.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use periscope::artifacts::{self, PushOutcome, Target};
use periscope::error::ErrorClass;
use periscope::job::JobIdentity;
use periscope::storage::StoreOptions;

use super::size::{human, parse_size};
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

/// Where pushes go, for the commands that have no storage of their own (`artifacts push`, `exec`).
/// Invariant: none until [`PushTarget::open`] checks the storage and identity.
#[derive(clap::Args, Clone)]
pub struct PushTarget {
    /// Where artifacts are saved: s3://bucket/prefix, gs://…, az://container/prefix,
    /// file:///path or a folder.
    #[arg(long, env = "PERISCOPE_STORAGE", value_name = "URL")]
    pub storage: Option<String>,
    /// Experiment id. [default: $JOB_ID]
    #[arg(long, env = "PERISCOPE_EXPERIMENT_ID")]
    pub experiment_id: Option<String>,
    /// Worker name. [default: derived from TF_CONFIG, CLUSTER_SPEC or RANK]
    #[arg(long, env = "PERISCOPE_WORKER")]
    pub worker: Option<String>,
    /// Folder for the push state that lets an interrupted push continue.
    #[arg(
        long,
        env = "PERISCOPE_STATE_DIR",
        value_name = "DIR",
        default_value = "periscope-data/state"
    )]
    pub state_dir: PathBuf,
}

impl PushTarget {
    /// Resolves the identity and opens the store (checked before any work is done).
    pub fn open(&self) -> Result<Target, Failure> {
        let Some(storage) = &self.storage else {
            return Err(needs_storage());
        };
        let identity = JobIdentity::resolve(self.experiment_id.clone(), self.worker.clone())?;
        let url = super::storage_url::parse(storage)?;
        Ok(Target::open(&url, &identity, &StoreOptions::default())?)
    }
}

/// How artifacts go up; shared by every command that pushes them. Invariant: concurrency is
/// 1..=256 (clap checks it); the part size is raised to 5 MiB when smaller.
#[derive(clap::Args, Clone)]
pub struct PushTuning {
    /// Files (or parts of one large file) uploaded at once.
    #[arg(long, env = "PERISCOPE_ARTIFACTS_CONCURRENCY", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub artifacts_concurrency: u16,
    /// Part size of multipart uploads, at least 5MiB; larger files use them, and at most
    /// concurrency × part size bytes are held in memory.
    #[arg(long, env = "PERISCOPE_ARTIFACTS_PART_SIZE", default_value = "8MiB", value_parser = parse_size)]
    pub artifacts_part_size: u64,
}

impl PushTuning {
    /// The library's settings.
    pub fn settings(&self) -> artifacts::PushTuning {
        artifacts::PushTuning {
            concurrency: usize::from(self.artifacts_concurrency),
            part_size: self.artifacts_part_size,
        }
    }
}

/// `--artifacts DIR` for `sidecar`, `run` and `exec`. Invariant: none (an empty list means no
/// artifacts; empty values from the environment are dropped by [`ArtifactsFlags::dirs`]).
#[derive(clap::Args, Clone)]
pub struct ArtifactsFlags {
    /// Folder of model artifacts to save to <storage>/<experiment>/<worker>/artifacts/<n>/ when
    /// the main command ends (repeatable; see `periscope artifacts push --help`).
    #[arg(
        long = "artifacts",
        env = "PERISCOPE_ARTIFACTS",
        value_delimiter = ' ',
        value_name = "DIR"
    )]
    pub artifacts: Vec<PathBuf>,
    #[command(flatten)]
    pub tuning: PushTuning,
}

impl ArtifactsFlags {
    /// The folders given (empty values dropped).
    pub fn dirs(&self) -> Vec<PathBuf> {
        self.artifacts
            .iter()
            .filter(|d| !d.as_os_str().is_empty())
            .cloned()
            .collect()
    }
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

/// Prints a line per save, as each push's outcome.
pub fn print_saves(saves: &[(PathBuf, PushOutcome)]) {
    for (dir, outcome) in saves {
        eprintln!("{}", describe(dir, outcome));
    }
}

/// `1,234`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The line printed for one push.
fn describe(dir: &Path, o: &PushOutcome) -> String {
    let what = format!(
        "{} files, {}, manifest sha256 {}",
        thousands(o.files),
        human(o.bytes),
        o.manifest_sha256
    );
    let mut line = if o.unchanged {
        format!(
            "{}: unchanged, identical to save {} ({what}) at {}",
            dir.display(),
            o.save,
            o.url
        )
    } else {
        format!(
            "{}: save {}: {what} at {}; {} sent, {} copied from the previous save, {} already stored{}",
            dir.display(),
            o.save,
            o.url,
            thousands(o.sent),
            thousands(o.copied),
            thousands(o.already_stored),
            if o.resumed { " (continued an interrupted push)" } else { "" }
        )
    };
    if o.reused_parts > 0 {
        line.push_str(&format!(
            "\n  {} parts ({}) of large files were stored by the interrupted push and not sent again",
            thousands(o.reused_parts),
            human(o.reused_bytes)
        ));
    }
    for s in &o.skipped {
        line.push_str(&format!("\n  skipped {}: {}", s.path, s.reason));
    }
    line
}

/// A usage failure for a push without a storage to push to.
fn needs_storage() -> Failure {
    Failure::new(
        ErrorClass::Usage,
        "saving artifacts needs --storage (or PERISCOPE_STORAGE)",
        Some("give the storage URL the artifacts are saved under".into()),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn thousands_separators() {
        assert_eq!(super::thousands(0), "0");
        assert_eq!(super::thousands(1001), "1,001");
        assert_eq!(super::thousands(1_234_567), "1,234,567");
    }
}
