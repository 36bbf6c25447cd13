//! `periscope run -- CMD…`: its flags become the run's settings (everything under one data
//! folder by default); it prints what the run did and exits with CMD's code.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use periscope::error::ErrorClass;
use periscope::lifecycle::Ending;
use periscope::localize::SourceSpec;
use periscope::run::{DataDir, RunError, RunReport, RunSettings};

use super::progress::Display;
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
    #[command(flatten)]
    id: super::save_flags::IdentityFlags,
    /// Continue the run of --experiment-id on purpose (one that was interrupted, or to add an
    /// attempt to it); without it a used id is refused.
    #[arg(long, env = "PERISCOPE_RESUME")]
    resume: bool,
    /// Seconds to keep shipping after CMD ends before giving up on what is left.
    #[arg(long, env = "PERISCOPE_DRAIN_TIMEOUT", default_value_t = 60.0)]
    drain_timeout: f64,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(
        long,
        env = "PERISCOPE_LISTEN",
        default_value = "127.0.0.1:0",
        value_name = "ADDR"
    )]
    listen: std::net::SocketAddr,
    /// Address of the MLflow-compatible endpoint CMD logs to (its MLFLOW_TRACKING_URI).
    #[arg(
        long,
        env = "PERISCOPE_MLFLOW_LISTEN",
        default_value = "127.0.0.1:0",
        value_name = "ADDR"
    )]
    mlflow_listen: std::net::SocketAddr,
    #[command(flatten)]
    ship: super::ship_flags::ShipRestoreFlags,
    /// The command and its arguments, after `--`.
    #[arg(trailing_var_arg = true, required = true, value_name = "CMD")]
    command: Vec<OsString>,
}

/// Runs `periscope run`.
pub async fn run(args: RunArgs) -> Result<ExitCode, Failure> {
    let settings = settings(args).map_err(not_run)?;
    let report = periscope::run::run(settings, Arc::new(Display::for_stderr()))
        .await
        .map_err(|e| match e {
            // Its message starts with the command's exit code.
            RunError::AfterCommand { .. } => Failure::from(e),
            e => not_run(e.into()),
        })?;
    // The terminal may be gone (SIGHUP): what cannot be shown is in the logs anyway.
    let mut err = std::io::stderr();
    if let Some(e) = &report.not_started {
        let _ = writeln!(err, "error: {e}");
    }
    super::save_flags::print_run_saves(report.restored.as_ref(), &report.sidecar.saving);
    let _ = writeln!(err, "{}", summary(&report));
    Ok(exit_code(report.code))
}

fn settings(args: RunArgs) -> Result<RunSettings, Failure> {
    let io = |e| Failure::new(ErrorClass::Io, format!("cannot use --data-dir: {e}"), None);
    let data = DataDir::new(&args.data_dir).map_err(io)?;
    let sources = (args.sources.iter())
        .filter(|s| !s.trim().is_empty())
        .map(|s| SourceSpec::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    let dest = std::path::absolute(args.dest.unwrap_or_else(|| data.code())).map_err(io)?;
    let storage = (args.storage.clone()).unwrap_or_else(|| data.storage().display().to_string());
    let storage = super::storage_url::parse(&storage)?;
    let (id, resume, listen) = (args.id, args.resume, (args.listen, args.mlflow_listen));
    let restore = args.ship.restore.restore;
    let claim = || Ok(data.claim_identity(id.experiment_id, id.worker, resume)?);
    let sidecar = (args.ship.ship).settings(storage, listen, args.drain_timeout, claim)?;
    let mut command = args.command.into_iter();
    // clap enforces at least one value (`required = true`).
    let command = (command.next().unwrap_or_default(), command.collect());
    data.plan(sources, dest, command, sidecar, restore)
        .map_err(|e| Failure::new(ErrorClass::Internal, e.to_string(), None))
}

/// A failure of Periscope's own before the command ran, said so: exit codes 2 and 3 are also
/// codes a command may use.
fn not_run(mut failure: Failure) -> Failure {
    failure
        .message
        .push_str(" (Periscope's own error: the command did not run)");
    failure
}

/// The run's last line: how CMD ended, what was stored where, and what is left.
fn summary(report: &RunReport) -> String {
    let s = &report.sidecar;
    let code = report.code;
    let ended = match periscope::exec::signal_of(code) {
        Some(signal) => format!("the command was ended by {signal} (exit {code})"),
        None => format!("the command exited {code}"),
    };
    let mut line = format!(
        "periscope: {ended}; {} of logs, {} event file(s) and {} metrics records stored; storage: {}",
        human(s.log_bytes), s.tfevents_files, s.metrics_delivered, s.stored_at
    );
    for (ending, what) in [(&s.shipping, "logs and tf.events"), (&s.metrics, "metrics")] {
        if let Ending::Incomplete { backlog, reason } = ending {
            line.push_str(&format!(
                "; stopped by {reason} with {} of {what} not yet stored: the next run with \
                 --resume and the same --experiment-id and --data-dir ships them",
                human(*backlog)
            ));
        }
    }
    line
}
