//! `periscope run`: localize, run the command and ship what it writes, in one process, for bare
//! VMs.
//!
//! The sources are localized as `periscope localize` does; a [`Sidecar`] is assembled exactly as
//! `periscope sidecar` assembles one; the command runs as `periscope exec` runs it, with its
//! exit-code file telling the sidecar's loops that the job is over. Everything defaults to one
//! data folder ([`DataDir`]) that the reading commands (`runs`, `metrics`, `logs`) find too.
//! This module never prints.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::artifacts::{Restored, Target};
use crate::error::{Classify, ErrorClass};
use crate::exec::{self, ExecError, ExecSpec};
use crate::job::JobIdentity;
use crate::lifecycle::Stop;
use crate::localize::{self, FetchContext, LocalizeError, Outcome, ProgressSink, SourceSpec};
use crate::sidecar::{Report, Settings, Sidecar, SidecarError};
use crate::tfevents::{Scope, Search};

/// How many folders below its working folder a command's own event files are looked for
/// (Hydra's `outputs/<date>/<time>/tb/` is four).
const SEARCH_DEPTH: usize = 6;

/// The folder `periscope run` keeps everything in by default. Invariant: an absolute path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataDir(PathBuf);

impl DataDir {
    /// The data folder at `root` (made absolute from the current folder).
    pub fn new(root: &Path) -> std::io::Result<DataDir> {
        Ok(DataDir(std::path::absolute(root)?))
    }

    pub fn root(&self) -> &Path {
        &self.0
    }

    /// Where sources land: `<data>/code/<source>`.
    pub fn code(&self) -> PathBuf {
        self.0.join("code")
    }

    /// The default storage: `<data>/storage/<experiment>/<worker>/…`.
    pub fn storage(&self) -> PathBuf {
        self.0.join("storage")
    }

    /// The embedded metastore every run under this folder shares.
    pub fn metastore(&self) -> PathBuf {
        self.0.join("metastore.db")
    }

    /// A run's own folder: its `stdout.log`, `stderr.log`, `exit-code`, `metrics.jsonl` and
    /// `tensorboard/`.
    pub fn run_dir(&self, id: &JobIdentity) -> PathBuf {
        self.0.join("runs").join(&id.experiment).join(&id.worker)
    }

    /// A run's checkpoints and metrics queue.
    pub fn state(&self, id: &JobIdentity) -> PathBuf {
        self.0.join("state").join(&id.experiment).join(&id.worker)
    }

    /// The settings of a run of `program` in this data folder: `sidecar` says what the flags
    /// asked for; the run adds its own folder's logs, its metrics file, its exit-code file, the
    /// folder for event files when none was given, and the shared embedded metastore. `restore`
    /// is the folder the latest save is restored into first, if any.
    pub fn plan(
        &self,
        sources: Vec<SourceSpec>,
        dest: PathBuf,
        command: (OsString, Vec<OsString>),
        mut sidecar: Settings,
        restore: Option<PathBuf>,
    ) -> Result<RunSettings, crate::ship::discover::GlobError> {
        let run_dir = self.run_dir(&sidecar.identity);
        let own_logs = crate::ship::LogGlob::new(&format!("{}/*.log", run_dir.display()))?;
        sidecar.logs.globs.insert(0, own_logs);
        if sidecar.tfevents.is_empty() {
            sidecar.tfevents.push(run_dir.join("tensorboard"));
        }
        // Event files the command writes where writers put them by default (tensorboardX's and
        // PyTorch's ./runs/, Lightning's ./lightning_logs/) are found under its working folder;
        // `run` sets the time from which they count when the command starts.
        let workdir = match sources.first() {
            Some(first) => dest.join(&first.into),
            None => std::env::current_dir().unwrap_or_default(),
        };
        let mut skip = vec![self.0.clone()];
        skip.extend(sidecar.tfevents.iter().cloned());
        sidecar.tfevents_search = Some(Search {
            root: workdir,
            scope: Scope {
                since: None,
                max_depth: Some(SEARCH_DEPTH),
                skip_hidden: true,
                skip,
            },
        });
        let metrics_file = run_dir.join("metrics.jsonl");
        sidecar.metrics.files.push(metrics_file.clone());
        sidecar.metrics.default_sqlite = Some(self.metastore());
        sidecar.lifecycle.exit_when_file = Some(run_dir.join(exec::EXIT_CODE_FILE));
        sidecar.state_dir = self.state(&sidecar.identity);
        // A command at a terminal starts only once its output has a place to go.
        sidecar.claim_first = true;
        Ok(RunSettings {
            sources,
            dest,
            tensorboard: sidecar.tfevents[0].clone(),
            metrics_file,
            run_dir,
            program: command.0,
            args: command.1,
            sidecar,
            restore,
        })
    }

    /// The identity of a new run, as [`JobIdentity::resolve`] derives it from the flags and the
    /// environment (`JOB_ID`, then a fresh id), its folder claimed as [`DataDir::claim`] says.
    pub fn claim_identity(
        &self,
        experiment: Option<String>,
        worker: Option<String>,
        resume: bool,
    ) -> Result<JobIdentity, RunError> {
        let env = std::env::var("JOB_ID")
            .ok()
            .filter(|v| !v.trim().is_empty());
        let given = experiment.or(env);
        // Checked before anything is made: a fresh id is valid by construction.
        let checked = JobIdentity::resolve(Some(given.clone().unwrap_or("run".into())), worker)?;
        let experiment = self.claim(given.as_deref(), &checked.worker, resume)?;
        Ok(JobIdentity {
            experiment,
            ..checked
        })
    }

    /// Claims the folder of a new run and returns its experiment id: `id` when given (refused
    /// when that worker already ran under it, unless `resume`), else a fresh `run-<UTC time>`,
    /// with `-2`, `-3`… when runs started in the same second took it. Either is claimed by
    /// creating its folder, so two runs started together never share one.
    pub fn claim(&self, id: Option<&str>, worker: &str, resume: bool) -> Result<String, RunError> {
        let runs = self.0.join("runs");
        std::fs::create_dir_all(&runs).map_err(|source| RunError::Folder {
            path: runs.clone(),
            source,
        })?;
        let Some(id) = id else {
            let stamp = chrono::Utc::now().format("run-%Y%m%d-%H%M%S").to_string();
            for n in 1.. {
                let id = if n == 1 {
                    stamp.clone()
                } else {
                    format!("{stamp}-{n}")
                };
                match std::fs::create_dir(runs.join(&id)) {
                    Ok(()) => return Ok(id),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                    Err(source) => {
                        return Err(RunError::Folder {
                            path: runs.join(&id),
                            source,
                        })
                    }
                }
            }
            unreachable!("the loop over 1.. returns")
        };
        let folder = runs.join(id).join(worker);
        let made =
            std::fs::create_dir_all(runs.join(id)).and_then(|()| std::fs::create_dir(&folder));
        match made {
            Ok(()) => Ok(id.to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && resume => Ok(id.to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let ended = std::fs::read_to_string(folder.join(exec::EXIT_CODE_FILE))
                    .ok()
                    .map(|code| code.trim().to_string());
                Err(RunError::Taken {
                    experiment: id.to_string(),
                    worker: worker.to_string(),
                    ended,
                })
            }
            Err(source) => Err(RunError::Folder {
                path: folder,
                source,
            }),
        }
    }
}

/// What to run and where. Invariant: `sidecar.lifecycle.exit_when_file` is the exit-code file
/// of `run_dir`, and the folders the sidecar follows include `run_dir`'s logs.
#[derive(Debug, Clone)]
pub struct RunSettings {
    pub sources: Vec<SourceSpec>,
    /// Where sources land.
    pub dest: PathBuf,
    /// The capture folder of the command's output and exit code.
    pub run_dir: PathBuf,
    /// `SUBMARINE_TENSORBOARD_LOG_DIR` for the command.
    pub tensorboard: PathBuf,
    /// `PERISCOPE_METRICS_FILE` for the command.
    pub metrics_file: PathBuf,
    pub program: OsString,
    pub args: Vec<OsString>,
    pub sidecar: Settings,
    /// A folder the latest save is restored into before the command starts.
    pub restore: Option<PathBuf>,
}

/// What a run did.
#[derive(Debug)]
pub struct RunReport {
    pub localized: Vec<Outcome>,
    /// The command's exit code, as a shell reports it.
    pub code: i32,
    /// Why the command could not be started, if it could not (`code` is then 127 or 126).
    pub not_started: Option<ExecError>,
    pub sidecar: Report,
    /// The folder `restore` named, what was restored into it, and the saves' redacted URL.
    pub restored: Option<(PathBuf, Restored, String)>,
}

/// Why a run could not be done.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Localize(#[from] LocalizeError),
    #[error(transparent)]
    Sidecar(#[from] SidecarError),
    #[error(transparent)]
    Exec(#[from] ExecError),
    #[error("cannot prepare `{}`: {source}", path.display())]
    Folder {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot handle signals: {0}")]
    Signals(std::io::Error),
    #[error(transparent)]
    Identity(#[from] crate::job::IdentityError),
    /// The experiment id was given, and this worker already ran under it.
    #[error("experiment `{experiment}` already has a run of {worker} in the data folder ({})", match ended {
        Some(code) => format!("it exited {code}"),
        None => "it was interrupted before the command ended".to_string(),
    })]
    Taken {
        experiment: String,
        worker: String,
        ended: Option<String>,
    },
    /// The command ran (and exited `code`), then shipping what it wrote failed.
    #[error("the command exited {code}, then Periscope failed: {source}")]
    AfterCommand { code: i32, source: SidecarError },
}

impl Classify for RunError {
    fn class(&self) -> ErrorClass {
        match self {
            RunError::Localize(e) => e.class(),
            RunError::Sidecar(e) => e.class(),
            RunError::Exec(e) => e.class(),
            RunError::Folder { .. } => ErrorClass::Io,
            RunError::Signals(_) => ErrorClass::Internal,
            RunError::Taken { .. } => ErrorClass::Usage,
            RunError::Identity(e) => e.class(),
            RunError::AfterCommand { source, .. } => source.class(),
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            RunError::Localize(e) => e.hint(),
            RunError::Sidecar(e) => e.hint(),
            RunError::Exec(e) => e.hint(),
            RunError::Folder { .. } => {
                Some("check permissions and free space of --data-dir".into())
            }
            RunError::Signals(_) => None,
            RunError::Taken { .. } => Some(
                "leave out --experiment-id (and JOB_ID) for a fresh id, choose a new one, or pass \
                 --resume to continue that run on purpose (its logs and metrics are added to)"
                    .into(),
            ),
            RunError::AfterCommand { source, .. } => source.hint(),
            RunError::Identity(e) => e.hint(),
        }
    }
}

/// Localizes, starts the sidecar, runs the command in the first source (or here, with none),
/// then drains. A signal while the command runs goes to the command; one during the drain ends
/// it at once (the checkpoints keep what is left for a later run of the same experiment).
pub async fn run(
    mut settings: RunSettings,
    progress: Arc<dyn ProgressSink>,
) -> Result<RunReport, RunError> {
    let localized = if settings.sources.is_empty() {
        Vec::new()
    } else {
        localize::localize(
            &settings.sources,
            &settings.dest,
            &FetchContext::default(),
            progress,
        )
        .await?
    };
    let code_dir = localized.first().map(|o| settings.dest.join(&o.entry.into));
    // The run's code is exactly what it localized.
    settings.sidecar.metrics.code = localized.iter().map(|o| o.entry.clone()).collect();
    for dir in [
        &settings.run_dir,
        &settings.tensorboard,
        &settings.sidecar.state_dir,
    ] {
        match std::fs::create_dir_all(dir) {
            // The sidecar waits for room in its state folder and makes it then.
            Err(e) if crate::fsutil::no_room(&e) && dir == &settings.sidecar.state_dir => {}
            result => result.map_err(|source| RunError::Folder {
                path: dir.clone(),
                source,
            })?,
        }
    }
    // The exit-code file is how the sidecar's loops learn that the command ended and how; one
    // left by an earlier run of this experiment must go first.
    let exit_file = settings.run_dir.join(exec::EXIT_CODE_FILE);
    match std::fs::remove_file(&exit_file) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(RunError::Folder {
                path: exit_file,
                source: e,
            })
        }
        _ => {}
    }
    let restored = match &settings.restore {
        Some(dir) => Some(restore(dir, &settings.sidecar).await?),
        None => None,
    };
    // What the command writes from now on is its own; event files already there are not.
    if let Some(search) = &mut settings.sidecar.tfevents_search {
        search.scope.since = Some(std::time::SystemTime::now());
    }
    let (requests, stop) = Stop::channel();
    let sidecar = Sidecar::start(settings.sidecar.clone(), stop).await?;
    let mut endpoint = sidecar.mlflow_addr();
    if endpoint.ip().is_unspecified() {
        endpoint.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let identity = &settings.sidecar.identity;
    let mut env: Vec<(OsString, OsString)> = vec![
        (
            "SUBMARINE_TENSORBOARD_LOG_DIR".into(),
            settings.tensorboard.clone().into(),
        ),
        (
            "PERISCOPE_METRICS_FILE".into(),
            settings.metrics_file.clone().into(),
        ),
        ("JOB_ID".into(), identity.experiment.clone().into()),
        // Scripts that use the mlflow client log through Periscope, never waiting on a server.
        (
            "MLFLOW_TRACKING_URI".into(),
            format!("http://{endpoint}").into(),
        ),
    ];
    if let Some(code) = &code_dir {
        env.push(("CODE_PATH".into(), code.clone().into()));
    }
    let spec = ExecSpec {
        program: settings.program.clone(),
        args: settings.args.clone(),
        capture_dir: settings.run_dir.clone(),
        env,
        cwd: code_dir,
    };
    tracing::info!(experiment = %identity.experiment, worker = %identity.worker, "running the command");
    let ran = exec::run_here(&spec).await?;
    // The command is over: drain now, and let a signal end the drain.
    requests.request();
    requests.on_signals().map_err(RunError::Signals)?;
    let report = sidecar.finish().await?;
    Ok(RunReport {
        localized,
        code: ran.code,
        not_started: ran.not_started,
        sidecar: report,
        restored,
    })
}

/// Restores the latest save of the run's experiment and worker into `dir`, before the command
/// starts and before the sidecar's saves begin.
async fn restore(dir: &Path, sidecar: &Settings) -> Result<(PathBuf, Restored, String), RunError> {
    let options = crate::storage::StoreOptions::default();
    let target =
        Target::open(&sidecar.storage, &sidecar.identity, &options).map_err(SidecarError::from)?;
    let restored =
        (target.restore(dir, sidecar.push.concurrency).await).map_err(SidecarError::from)?;
    tracing::info!(dir = %dir.display(), outcome = ?restored, "restore before the command");
    Ok((dir.to_path_buf(), restored, target.shown_base()))
}
