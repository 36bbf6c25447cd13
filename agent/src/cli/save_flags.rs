//! The flags and output every command that saves artifacts shares (`artifacts push`, `exec`,
//! `sidecar`, `run`): where saves go, how they go up, and the line printed per save.

use std::path::{Path, PathBuf};

use periscope::artifacts::{self, PushOutcome, Target};
use periscope::error::ErrorClass;
use periscope::job::JobIdentity;
use periscope::storage::StoreOptions;

use super::size::{human, parse_size};
use super::{format, Failure};

/// Who this process works for: the flags every command that stores something shares.
#[derive(clap::Args, Clone)]
pub struct IdentityFlags {
    /// Experiment id. [default: $JOB_ID; `run`: else a fresh run-<UTC time>]
    #[arg(long, env = "PERISCOPE_EXPERIMENT_ID")]
    pub experiment_id: Option<String>,
    /// Worker name. [default: derived from TF_CONFIG, CLUSTER_SPEC or RANK, else worker-0]
    #[arg(long, env = "PERISCOPE_WORKER")]
    pub worker: Option<String>,
}

/// Where pushes go, for the commands that have no storage of their own (`artifacts push`, `exec`).
/// Invariant: none until [`PushTarget::open`] checks the storage and identity.
#[derive(clap::Args, Clone)]
pub struct PushTarget {
    /// Where artifacts are saved: s3://bucket/prefix, gs://…, az://container/prefix,
    /// file:///path or a folder.
    #[arg(long, env = "PERISCOPE_STORAGE", value_name = "URL")]
    pub storage: Option<String>,
    #[command(flatten)]
    pub id: IdentityFlags,
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
        let identity = JobIdentity::resolve(self.id.experiment_id.clone(), self.id.worker.clone())?;
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

/// Prints a line per save, as each push's outcome.
pub fn print_saves(saves: &[(PathBuf, PushOutcome)]) {
    for (dir, outcome) in saves {
        eprintln!("{}", describe(dir, outcome));
    }
}

/// The line printed for one push.
fn describe(dir: &Path, o: &PushOutcome) -> String {
    let what = format!(
        "{} files, {}, manifest sha256 {}",
        format::thousands(o.files),
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
            format::thousands(o.sent),
            format::thousands(o.copied),
            format::thousands(o.already_stored),
            if o.resumed { " (continued an interrupted push)" } else { "" }
        )
    };
    if o.reused_parts > 0 {
        line.push_str(&format!(
            "\n  {} parts ({}) of large files were stored by the interrupted push and not sent again",
            format::thousands(o.reused_parts),
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
