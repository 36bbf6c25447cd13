//! The flags and output every command that saves artifacts shares (`artifacts push`, `exec`,
//! `sidecar`, `run`): where saves go, how they go up, and the line printed per save.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use periscope::artifacts::{self, PushOutcome, Restored, SavesReport, Schedule, Target};
use periscope::error::ErrorClass;
use periscope::job::{Fallback, JobIdentity, Lookup};
use periscope::storage::StoreOptions;

use super::localize::parse_duration;
use super::size::{human, parse_size};
use super::{format, Failure};

/// Who this process works for: the flags every command that stores something shares.
#[derive(clap::Args, Clone)]
pub struct IdentityFlags {
    /// Experiment id. [default: $JOB_ID; `run`: else a fresh run-<UTC time>]
    #[arg(long, env = "PERISCOPE_EXPERIMENT_ID")]
    pub experiment_id: Option<String>,
    /// Worker name, at most 32 characters. [default: from TF_CONFIG, CLUSTER_SPEC or RANK, else
    /// JOB_COMPLETION_INDEX (worker-N), else PERISCOPE_REPLICA_TYPE and PERISCOPE_REPLICA_INDEX
    /// (the training operator's labels), else (`sidecar`) what `exec` published, else the
    /// hostname (`sidecar`, `exec`) or worker-0 (`run`, `artifacts push`)]
    #[arg(long, env = "PERISCOPE_WORKER")]
    pub worker: Option<String>,
}

/// Where saves are, for the commands that have no storage of their own (`artifacts`, `exec`).
/// Invariant: none until [`SaveStore::open`] checks the storage and identity.
#[derive(clap::Args, Clone)]
pub struct SaveStore {
    /// Where artifacts are saved: s3://bucket/prefix, gs://…, az://container/prefix,
    /// file:///path or a folder.
    #[arg(long, env = "PERISCOPE_STORAGE", value_name = "URL")]
    pub storage: Option<String>,
    #[command(flatten)]
    pub id: IdentityFlags,
}

impl SaveStore {
    /// Resolves the identity (`fallback` when nothing names the worker) and opens the store
    /// (checked before any work is done).
    pub fn open(&self, fallback: Fallback) -> Result<Target, Failure> {
        let Some(storage) = &self.storage else {
            return Err(needs_storage());
        };
        let (id, worker) = (self.id.experiment_id.clone(), self.id.worker.clone());
        let lookup = Lookup {
            fallback,
            ..Lookup::vm()
        };
        let (identity, _) = JobIdentity::resolve_with(id, worker, &lookup)?;
        let url = super::storage_url::parse(storage)?;
        Ok(Target::open(&url, &identity, &StoreOptions::default())?)
    }
}

/// Where pushes go, and the state that lets a killed push continue.
#[derive(clap::Args, Clone)]
pub struct PushTarget {
    #[command(flatten)]
    pub store: SaveStore,
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
    /// Resolves the identity (`fallback` when nothing names the worker) and opens the store
    /// (checked before any work is done).
    pub fn open(&self, fallback: Fallback) -> Result<Target, Failure> {
        self.store.open(fallback)
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
    /// the main command ends, and while it runs with --artifacts-every or --artifacts-marker
    /// (repeatable; see `periscope artifacts push --help`).
    #[arg(
        long = "artifacts",
        env = "PERISCOPE_ARTIFACTS",
        value_delimiter = ' ',
        value_name = "DIR"
    )]
    pub artifacts: Vec<PathBuf>,
    #[command(flatten)]
    pub tuning: PushTuning,
    #[command(flatten)]
    pub schedule: ScheduleFlags,
}

/// When saves are taken while the command runs, how many are kept, and how long the final one
/// may take. Invariant: durations are positive (the parser refuses others).
#[derive(clap::Args, Clone)]
pub struct ScheduleFlags {
    /// Also save the --artifacts folders this often while the command runs (10m, 1h30m); files
    /// unchanged since the previous save are not uploaded again.
    #[arg(long, env = "PERISCOPE_ARTIFACTS_EVERY", value_name = "DURATION", value_parser = parse_duration)]
    pub artifacts_every: Option<Duration>,
    /// Save when this file appears (keep it outside the --artifacts folders); it is removed once
    /// that save is complete, so a script can touch it after writing a checkpoint and wait until
    /// it is gone.
    #[arg(long, env = "PERISCOPE_ARTIFACTS_MARKER", value_name = "PATH")]
    pub artifacts_marker: Option<PathBuf>,
    /// Keep the newest N complete saves: older ones are deleted after each new save (never the
    /// newest, nor one a restore is reading).
    #[arg(long, env = "PERISCOPE_KEEP_SAVES", value_name = "N")]
    pub keep_saves: Option<NonZeroUsize>,
    /// How long the final save may run after the first SIGTERM (or SIGINT, SIGHUP): the pod's
    /// grace period starts then. 20s fits Kubernetes' default terminationGracePeriodSeconds of 30
    /// and leaves CMD 10s to stop; use about your grace period minus 10s. What is cut is recorded
    /// in the state folder and continued by the next start. Without a signal there is no limit.
    #[arg(long, env = "PERISCOPE_FINAL_SAVE_TIMEOUT", value_name = "DURATION", default_value = "20s", value_parser = parse_duration)]
    pub final_save_timeout: Duration,
}

impl ScheduleFlags {
    /// The library's schedule; the marker is looked for every `poll`.
    pub fn settings(&self, poll: Duration) -> Schedule {
        Schedule {
            every: self.artifacts_every,
            marker: self.artifacts_marker.clone(),
            keep: self.keep_saves,
            final_timeout: self.final_save_timeout,
            poll,
        }
    }
}

/// `--restore DIR` for `exec` and `run`. Invariant: none.
#[derive(clap::Args, Clone)]
pub struct RestoreFlag {
    /// Before CMD starts, bring the latest complete save of this experiment and worker into DIR
    /// (verified; only when DIR is empty or missing: files there are newer and are kept), so a
    /// restarted job resumes from its checkpoint. See `periscope artifacts restore --help`.
    #[arg(long, env = "PERISCOPE_RESTORE", value_name = "DIR")]
    pub restore: Option<PathBuf>,
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

/// Prints the saves taken while the command ran and the final ones (or what cut them short);
/// returns a failure when the final save was cut by its deadline.
pub fn print_saving(report: &SavesReport) -> Result<(), Failure> {
    let new = report.during.iter().filter(|(_, o)| !o.unchanged).count();
    if new > 0 || report.failed > 0 || !report.pruned.is_empty() {
        let mut line = format!(
            "periscope: {new} save(s) while the command ran ({} on the marker)",
            report.marked
        );
        if let Some((_, last)) = report.during.iter().rev().find(|(_, o)| !o.unchanged) {
            line.push_str(&format!(", the last save {} at {}", last.save, last.url));
        }
        if report.during.iter().any(|(_, o)| o.resumed) {
            line.push_str("; continued a save an earlier start left unfinished");
        }
        if !report.pruned.is_empty() {
            let pruned: Vec<String> = report.pruned.iter().map(u64::to_string).collect();
            line.push_str(&format!(
                "; pruned save(s) {} (--keep-saves)",
                pruned.join(", ")
            ));
        }
        if let Some(e) = &report.last_error {
            line.push_str(&format!("; {} failed, the last with: {e}", report.failed));
        }
        eprintln!("{line}");
    }
    print_saves(&report.last);
    let Some(cut) = &report.cut else {
        return Ok(());
    };
    let left = match cut.save {
        Some(n) => format!("save {n} is unfinished with {} file(s) stored", cut.stored),
        None => "no save was begun".into(),
    };
    Err(Failure::new(
        ErrorClass::Network,
        format!(
            "{}: the final save was cut by --final-save-timeout {:.1}s after the stop signal; {left}",
            cut.dir.display(),
            cut.after.as_secs_f64()
        ),
        Some("the push state records it: the next start with the same state folder (run: the same --data-dir; or `periscope artifacts push`) continues it without sending again what is stored".into()),
    ))
}

/// What `run` prints of its saves: the restore before the command, then the saves. A final save
/// cut by its deadline is said, not failed: `run`'s exit code stays the command's.
pub fn print_run_saves(restored: Option<&(PathBuf, Restored, String)>, saving: &SavesReport) {
    if let Some((dir, restored, from)) = restored {
        eprintln!("{}", describe_restore(dir, restored, from));
    }
    if let Err(cut) = print_saving(saving) {
        eprintln!("periscope: {}", cut.message);
        if let Some(hint) = cut.hint {
            eprintln!("hint: {hint}");
        }
    }
}

/// The line printed for a restore of `dir`.
pub fn describe_restore(dir: &Path, restored: &Restored, from: &str) -> String {
    let dir = dir.display();
    match restored {
        Restored::Loaded { save, files, bytes } => format!(
            "{dir}: restored save {save} ({} files, {}) from {from}/{save}/, verified against its manifest",
            format::thousands(*files),
            human(*bytes)
        ),
        Restored::AlreadyThere { save } => {
            format!("{dir}: already holds save {save} of {from}; nothing to restore")
        }
        Restored::KeptLocal { files, latest } => format!(
            "{dir}: holds {} file(s) already, kept as they are ({}); restore fills an empty folder only",
            format::thousands(*files as u64),
            match latest {
                Some(n) => format!("written since save {n}, the latest"),
                None => "no save is stored yet".into(),
            }
        ),
        Restored::NothingYet => {
            format!("{dir}: nothing to restore yet: no complete save under {from}/ (a first start)")
        }
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
