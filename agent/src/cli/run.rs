//! `periscope run -- CMD…`: its flags become the run's settings (everything under one data
//! folder by default); it prints what the run did and exits with CMD's code.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use periscope::error::ErrorClass;
use periscope::exec::EXIT_CODE_FILE;
use periscope::job::JobIdentity;
use periscope::lifecycle::{Ending, Lifecycle};
use periscope::localize::SourceSpec;
use periscope::run::{DataDir, RunReport, RunSettings};
use periscope::sidecar::Settings;

use super::progress::Display;
use super::ship_flags::{seconds, ShipFlags};
use super::size::human;
use super::{exit_code, Failure};

/// Localize, run a command, and ship what it writes, all in one process (for bare VMs).
#[derive(clap::Args)]
#[command(after_long_help = include_str!("help/run.txt"))]
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
    /// Where logs, tf.events and saves are stored. [default: <data-dir>/storage]
    #[arg(long, env = "PERISCOPE_STORAGE", value_name = "URL")]
    storage: Option<String>,
    /// Experiment id. [default: $JOB_ID, else run-<UTC time>]
    #[arg(long, env = "PERISCOPE_EXPERIMENT_ID")]
    experiment_id: Option<String>,
    /// Worker name. [default: derived from TF_CONFIG, CLUSTER_SPEC or RANK, else worker-0]
    #[arg(long, env = "PERISCOPE_WORKER")]
    worker: Option<String>,
    /// Seconds to keep shipping after CMD ends before giving up on what is left.
    #[arg(long, env = "PERISCOPE_DRAIN_TIMEOUT", default_value_t = 60.0)]
    drain_timeout: f64,
    /// Address of the MLflow-compatible endpoint CMD logs to (and of /healthz, /metrics).
    #[arg(
        long,
        env = "PERISCOPE_LISTEN",
        default_value = "127.0.0.1:0",
        value_name = "ADDR"
    )]
    listen: std::net::SocketAddr,
    #[command(flatten)]
    ship: ShipFlags,
    /// The command and its arguments, after `--`.
    #[arg(trailing_var_arg = true, required = true, value_name = "CMD")]
    command: Vec<OsString>,
}

/// Runs `periscope run`.
pub async fn run(args: RunArgs) -> Result<ExitCode, Failure> {
    let settings = settings(args)?;
    let report = periscope::run::run(settings, Arc::new(Display::for_stderr())).await?;
    for o in &report.localized {
        tracing::info!(source = %o.entry.url, revision = %o.entry.revision.id, unchanged = o.skipped,
            "code is in {}", o.entry.into);
    }
    if let Some(e) = &report.not_started {
        eprintln!("error: {e}");
    }
    super::save_flags::print_saves(&report.sidecar.saves);
    eprintln!("{}", summary(&report));
    Ok(exit_code(report.code))
}

fn settings(args: RunArgs) -> Result<RunSettings, Failure> {
    let io = |e: std::io::Error| {
        Failure::new(ErrorClass::Io, format!("cannot use --data-dir: {e}"), None)
    };
    let data = DataDir::new(&args.data_dir).map_err(io)?;
    let experiment = args
        .experiment_id
        .or_else(|| std::env::var("JOB_ID").ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| format!("run-{}", chrono::Utc::now().format("%Y%m%d-%H%M%S")));
    let identity = JobIdentity::resolve(Some(experiment), args.worker)?;
    let sources = args
        .sources
        .iter()
        .filter(|s| !s.trim().is_empty())
        .map(|s| SourceSpec::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    let dest = std::path::absolute(args.dest.unwrap_or_else(|| data.code())).map_err(io)?;
    let storage = match &args.storage {
        Some(s) => super::storage_url::parse(s)?,
        None => super::storage_url::parse(&data.storage().display().to_string())?,
    };
    let run_dir = data.run_dir(&identity);
    let ship = &args.ship;
    let tfevents = ship.tfevents_dirs(Some(run_dir.join("tensorboard")));
    let metrics_file = run_dir.join("metrics.jsonl");
    let drain_timeout = seconds("drain-timeout", args.drain_timeout)?;
    let mut metrics = ship.metrics_settings(dest.clone(), vec![metrics_file.clone()]);
    metrics.default_sqlite = Some(data.metastore());
    let mut command = args.command.into_iter();
    Ok(RunSettings {
        sources,
        tensorboard: tfevents[0].clone(),
        metrics_file,
        // clap enforces at least one value (`required = true`).
        program: command.next().unwrap_or_default(),
        args: command.collect(),
        sidecar: Settings {
            storage,
            state_dir: data.state(&identity),
            logs: ship.log_settings(vec![format!("{}/*.log", run_dir.display())])?,
            tfevents_interval: seconds("tfevents-interval", ship.tfevents_interval)?,
            tfevents,
            lifecycle: Lifecycle {
                poll_interval: seconds("poll-interval", ship.poll_interval)?,
                drain_timeout,
                exit_when_file: Some(run_dir.join(EXIT_CODE_FILE)),
            },
            listen: args.listen,
            metrics,
            artifacts: ship.artifacts.dirs(),
            push: ship.push_tuning(),
            late_delivery: drain_timeout,
            identity,
        },
        dest,
        run_dir,
    })
}

/// The run's last line: how CMD ended and what was stored where.
fn summary(report: &RunReport) -> String {
    let sidecar = &report.sidecar;
    let left = match (&sidecar.shipping, &sidecar.metrics) {
        (Ending::Incomplete { backlog, reason }, _) => Some((human(*backlog), *reason, "logs")),
        (_, Ending::Incomplete { backlog, reason }) => Some((human(*backlog), *reason, "metrics")),
        _ => None,
    };
    let stored = format!(
        "{} of logs and {} metrics records stored; storage: {}",
        human(sidecar.log_bytes),
        sidecar.metrics_delivered,
        sidecar.stored_at
    );
    match left {
        None => format!("periscope: the command exited {}; {stored}", report.code),
        Some((backlog, reason, what)) => format!(
            "periscope: the command exited {}; stopped by {reason} with {backlog} of {what} not yet \
             stored (run again with the same --data-dir and --experiment-id to finish); {stored}",
            report.code
        ),
    }
}
