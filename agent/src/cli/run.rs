//! `periscope run -- CMD…`: everything in one process, for bare VMs.
//!
//! Localize the sources, run CMD in the first one with its output captured, ship logs and
//! tf.events exactly as the sidecar does while it runs, drain when it ends, and exit with its code.
//! With no flags everything lives under `./periscope-data/` (file storage and the state), so it
//! works with no services at all.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use periscope::error::ErrorClass;
use periscope::exec::{self, ExecSpec};
use periscope::job::JobIdentity;
use periscope::localize::{self, FetchContext, SourceSpec};
use periscope::redact::redact_url;
use periscope::retry::RetryPolicy;
use periscope::ship::{LogConfig, LogGlob, LogShipper, MirrorConfig, TfeventsMirror};
use periscope::sidecar::{self, Ending, Lifecycle, Pipelines};
use periscope::storage::{self, StoreOptions};
use tokio::sync::watch;

use super::exec::exit_code;
use super::progress::Display;
use super::size::human;
use super::Failure;

const AFTER_HELP: &str = "\
What happens:
  1. each --source is localized into --dest (as `periscope localize` does);
  2. CMD runs in the first localized source (CODE_PATH is set to it, as Submarine sets it), with
     SUBMARINE_TENSORBOARD_LOG_DIR and PERISCOPE_METRICS_FILE pointing into the run's folder;
  3. its stdout and stderr are shown live and captured; captured logs and tf.events files are shipped
     to --storage while it runs, exactly as `periscope sidecar` ships them; scalars from tf.events,
     the metrics file and mlflow calls (MLFLOW_TRACKING_URI points at Periscope) go to the metastore;
  4. when CMD ends, everything it wrote is drained to storage, each --artifacts folder is saved to
     <storage>/<experiment>/<worker>/artifacts/<n>/ (recorded as the param artifacts.<n>; see
     `periscope artifacts push --help`), and Periscope exits with CMD's code.
Ctrl-C and SIGTERM are forwarded to CMD.

Where things live (defaults, under --data-dir):
  periscope-data/code/<source>                      localized code
  periscope-data/runs/<experiment>/<worker>/        stdout.log, stderr.log, exit-code, tensorboard/
  periscope-data/storage/<experiment>/<worker>/     shipped logs and tf.events (read with `periscope logs`)
  periscope-data/state/<experiment>/<worker>/       checkpoints and the metrics queue
  periscope-data/metastore.db                       metrics, params and run status (Submarine's tables)

Examples (from the repository root; the example job is checked in three ways):
  periscope run --source \"git+file://$PWD/examples/training-job.git\" -- python3 train.py --epochs 3
  periscope run --source \"file://$PWD/examples/training-job.tar.gz\" -- python3 train.py
  periscope run --source \"$PWD/examples/training-job/\" -- python3 train.py --fail   # exits 3";

/// Localize, run a command, and ship what it writes, all in one process (for bare VMs).
#[derive(clap::Args)]
#[command(after_long_help = AFTER_HELP)]
pub struct RunArgs {
    /// Code to fetch first (repeatable); CMD runs in the first. See `periscope localize --help`.
    #[arg(
        long = "source",
        env = "PERISCOPE_SOURCE",
        value_delimiter = ' ',
        value_name = "SRC"
    )]
    sources: Vec<String>,
    /// Folder everything defaults to.
    #[arg(
        long,
        env = "PERISCOPE_DATA_DIR",
        default_value = "periscope-data",
        value_name = "DIR"
    )]
    data_dir: PathBuf,
    /// Where sources land. [default: <data-dir>/code]
    #[arg(long, env = "PERISCOPE_DEST", value_name = "DIR")]
    dest: Option<PathBuf>,
    /// Where logs and tf.events are stored. [default: <data-dir>/storage]
    #[arg(long, env = "PERISCOPE_STORAGE", value_name = "URL")]
    storage: Option<String>,
    /// Experiment id. [default: $JOB_ID, else run-<UTC time>]
    #[arg(long, env = "PERISCOPE_EXPERIMENT_ID")]
    experiment_id: Option<String>,
    /// Worker name. [default: derived from TF_CONFIG, CLUSTER_SPEC or RANK, else worker-0]
    #[arg(long, env = "PERISCOPE_WORKER")]
    worker: Option<String>,
    /// More log files to ship besides CMD's own output (globs).
    #[arg(
        long = "logs",
        env = "PERISCOPE_LOGS",
        value_delimiter = ' ',
        value_name = "GLOB"
    )]
    logs: Vec<String>,
    /// Seconds to keep shipping after CMD ends before giving up on what is left.
    #[arg(long, env = "PERISCOPE_DRAIN_TIMEOUT", default_value_t = 60.0)]
    drain_timeout: f64,
    #[command(flatten)]
    artifacts: super::artifacts::ArtifactsFlags,
    /// The command and its arguments, after `--`.
    #[arg(trailing_var_arg = true, required = true, value_name = "CMD")]
    command: Vec<OsString>,
}

fn absolute(path: &Path) -> Result<PathBuf, Failure> {
    if path.is_absolute() {
        return Ok(path.to_path_buf());
    }
    std::env::current_dir().map(|d| d.join(path)).map_err(|e| {
        Failure::new(
            ErrorClass::Io,
            format!("cannot read the current folder: {e}"),
            None,
        )
    })
}

fn create(dir: &Path) -> Result<(), Failure> {
    std::fs::create_dir_all(dir).map_err(|e| {
        Failure::new(
            ErrorClass::Io,
            format!("cannot create `{}`: {e}", dir.display()),
            None,
        )
    })
}

/// Runs `periscope run`.
pub async fn run(args: RunArgs) -> Result<ExitCode, Failure> {
    let data = absolute(&args.data_dir)?;
    let experiment = args
        .experiment_id
        .clone()
        .or_else(|| std::env::var("JOB_ID").ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| format!("run-{}", chrono::Utc::now().format("%Y%m%d-%H%M%S")));
    let identity = JobIdentity::resolve(Some(experiment), args.worker.clone())?;

    // 1. Localize.
    let dest = absolute(&args.dest.clone().unwrap_or_else(|| data.join("code")))?;
    let specs = args
        .sources
        .iter()
        .filter(|s| !s.trim().is_empty())
        .map(|s| SourceSpec::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    let mut code_dir = None;
    if !specs.is_empty() {
        let outcomes = localize::localize(
            &specs,
            &dest,
            &FetchContext::default(),
            Arc::new(Display::for_stderr()),
        )
        .await?;
        for o in &outcomes {
            tracing::info!(source = %o.entry.url, revision = %o.entry.revision.id,
                unchanged = o.skipped, "code is in {}", dest.join(&o.entry.into).display());
        }
        code_dir = outcomes.first().map(|o| dest.join(&o.entry.into));
    }

    // 2. The run's own folders.
    let run_dir = data
        .join("runs")
        .join(&identity.experiment)
        .join(&identity.worker);
    let tensorboard =
        match std::env::var_os("SUBMARINE_TENSORBOARD_LOG_DIR").filter(|v| !v.is_empty()) {
            Some(dir) => absolute(Path::new(&dir))?,
            None => run_dir.join("tensorboard"),
        };
    let state = data
        .join("state")
        .join(&identity.experiment)
        .join(&identity.worker);
    for dir in [&run_dir, &tensorboard, &state] {
        create(dir)?;
    }
    let metrics_file = run_dir.join("metrics.jsonl");

    // 3. Shipping, in this process, exactly as the sidecar does.
    let storage_text = match &args.storage {
        Some(s) => s.clone(),
        None => {
            let dir = data.join("storage");
            create(&dir)?;
            dir.display().to_string()
        }
    };
    let url = super::storage_url::parse(&storage_text)?;
    let options = StoreOptions {
        retry: RetryPolicy {
            attempts: 2,
            ..RetryPolicy::default()
        },
        ..StoreOptions::default()
    };
    let (store, prefix) = storage::open(&url, &options)?;
    let worker_prefix = super::sidecar::join(&prefix, &[&identity.experiment, &identity.worker]);
    let mut globs = vec![LogGlob::new(&format!("{}/*.log", run_dir.display()))
        .map_err(|e| Failure::new(ErrorClass::Usage, e.to_string(), None))?];
    for g in args.logs.iter().filter(|g| !g.trim().is_empty()) {
        globs.push(
            LogGlob::new(g).map_err(|e| Failure::new(ErrorClass::Usage, e.to_string(), None))?,
        );
    }
    let destination = format!(
        "{}#{}/{}",
        redact_url(url.as_str()),
        identity.experiment,
        identity.worker
    );
    let mut log_cfg = LogConfig::new(
        globs.clone(),
        worker_prefix.clone(),
        destination,
        state.clone(),
    );
    log_cfg.chunk_age = Duration::from_secs(2);
    // The exit-code file `exec` writes is how the pipelines learn that CMD ended and how it
    // ended (the run's status); one left by an earlier run of this experiment must go first.
    let exit_file = run_dir.join(exec::EXIT_CODE_FILE);
    match std::fs::remove_file(&exit_file) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(Failure::new(
                ErrorClass::Io,
                format!("cannot remove `{}`: {e}", exit_file.display()),
                None,
            ))
        }
        _ => {}
    }
    let lifecycle = Lifecycle {
        poll_interval: Duration::from_millis(500),
        drain_timeout: Duration::from_secs_f64(args.drain_timeout.max(0.1)),
        exit_when_file: Some(exit_file),
    };
    let mut pipelines = Pipelines {
        logs: Some(LogShipper::open(log_cfg, store.clone())?),
        tfevents: Some(TfeventsMirror::open(
            MirrorConfig {
                roots: vec![tensorboard.clone()],
                worker_prefix,
                state_dir: state.clone(),
                interval: Duration::from_secs(5),
                retry: RetryPolicy::default(),
                ..MirrorConfig::default()
            },
            store,
        )?),
        health: Default::default(),
    };
    let mut folders: Vec<PathBuf> = globs.iter().map(|g| g.base.clone()).collect();
    folders.push(tensorboard.clone());
    let (watcher, wake) = sidecar::watch_folders(&folders);
    let (stop_tx, stop_rx) = watch::channel(0u32);

    // Tracking metrics: the JSONL file, tf.events scalars and the MLflow-compatible endpoint, into
    // one SQLite metastore for every run under the data folder.
    let (ingest_routes, ingest) = super::sidecar_metrics::ingest(&identity);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| {
            Failure::new(
                ErrorClass::Io,
                format!("cannot open the local tracking endpoint: {e}"),
                None,
            )
        })?;
    let tracking_uri = listener
        .local_addr()
        .map(|a| format!("http://{a}"))
        .map_err(|e| {
            Failure::new(
                ErrorClass::Io,
                format!("cannot open the local tracking endpoint: {e}"),
                None,
            )
        })?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, ingest_routes).await {
            tracing::error!(error = %e, "the tracking endpoint stopped");
        }
    });
    let metrics_args = super::sidecar_metrics::MetricsArgs {
        metastore: Some(format!("sqlite://{}", data.join("metastore.db").display())),
        metrics_file: vec![metrics_file.clone()],
        code_dir: dest.clone(),
        metrics_queue_max_bytes: 256 << 20,
    };
    let metrics = super::sidecar_metrics::spawn(
        &metrics_args,
        vec![tensorboard.clone()],
        &state,
        &identity,
        &lifecycle,
        stop_rx.clone(),
        Some(super::sidecar_metrics::Endpoint {
            requests: ingest,
            // The metastore is always the explicit SQLite file above.
            addr: None,
        }),
    )
    .await?;
    let shipping = tokio::spawn(async move {
        let _watcher = watcher;
        let ending = sidecar::run(&mut pipelines, &lifecycle, stop_rx, wake).await;
        (ending, pipelines)
    });

    // 4. The command.
    let mut command = args.command.into_iter();
    let program = command.next().unwrap_or_default();
    let cwd = code_dir.clone();
    let mut env: Vec<(OsString, OsString)> = vec![
        (
            "SUBMARINE_TENSORBOARD_LOG_DIR".into(),
            tensorboard.clone().into(),
        ),
        ("PERISCOPE_METRICS_FILE".into(), metrics_file.clone().into()),
        ("JOB_ID".into(), identity.experiment.clone().into()),
        // Scripts that use the mlflow client log through Periscope, never waiting on a server.
        ("MLFLOW_TRACKING_URI".into(), tracking_uri.clone().into()),
    ];
    if let Some(code) = &code_dir {
        env.push(("CODE_PATH".into(), code.clone().into()));
    }
    let spec = ExecSpec {
        program,
        args: command.collect(),
        capture_dir: run_dir.clone(),
        env,
        cwd,
    };
    tracing::info!(experiment = %identity.experiment, worker = %identity.worker, "running the command");
    let code = super::exec::run_command(&spec).await?;

    // 5. Artifacts, while the logs drain: each --artifacts folder becomes a save.
    let artifact_dirs = args.artifacts.dirs();
    let saves = if artifact_dirs.is_empty() {
        Ok(Vec::new())
    } else {
        let target = super::artifacts::Target::open(&url, &identity, &StoreOptions::default())?;
        super::artifacts::push_dirs(&artifact_dirs, &target, &state, &args.artifacts.tuning).await
    };

    // 6. Drain: a signal during the drain ends it at once (the checkpoint keeps what is left).
    let _ = stop_tx.send(1);
    let signals = super::signals::stop_requests()?;
    let second = tokio::spawn(async move {
        let mut signals = signals;
        if signals.changed().await.is_ok() {
            let _ = stop_tx.send(2);
        }
    });
    let (ending, pipelines) = shipping.await.map_err(|e| {
        Failure::new(
            ErrorClass::Internal,
            format!("the shipping task failed: {e}"),
            None,
        )
    })?;
    let joined = super::sidecar_metrics::join(metrics, ending?).await;
    second.abort();
    let (ending, mut pipeline) = joined?;
    let saves = saves?;
    let items = saves
        .iter()
        .flat_map(|o| periscope::artifacts::record::items(o, &identity.worker))
        .collect();
    super::sidecar_metrics::deliver_late(&mut pipeline, items, Duration::from_secs(30)).await?;
    let shipped = pipelines
        .logs
        .as_ref()
        .map(|l| {
            l.stats()
                .bytes_shipped
                .load(std::sync::atomic::Ordering::Relaxed)
        })
        .unwrap_or(0);
    let stored_at = format!(
        "{}/{}/{}",
        url.as_str().trim_end_matches('/'),
        identity.experiment,
        identity.worker
    );
    match ending {
        Ending::Drained => eprintln!(
            "periscope: {}/{} exited {code}; {} of logs and the tf.events stored at {}",
            identity.experiment,
            identity.worker,
            human(shipped),
            redact_url(&stored_at)
        ),
        Ending::Incomplete { backlog, reason } => eprintln!(
            "periscope: {}/{} exited {code}; stopped by {reason} with {} not yet stored \
             (run again with the same --data-dir and --experiment-id to finish)",
            identity.experiment,
            identity.worker,
            human(backlog)
        ),
    }
    Ok(exit_code(code))
}
