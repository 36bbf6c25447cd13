//! `periscope sidecar`: its flags become a sidecar's settings; it runs until the job is over,
//! drains, and says how that ended.

use std::path::PathBuf;
use std::process::ExitCode;

use periscope::error::ErrorClass;
use periscope::job::JobIdentity;
use periscope::lifecycle::{Ending, Stop};
use periscope::localized::Record;
use periscope::sidecar::{Report, Settings, Sidecar};

use super::ship_flags::ShipFlags;
use super::size::human;
use super::Failure;

/// Ship logs, tf.events and metrics exactly once until the job ends, then drain.
#[derive(clap::Args)]
#[command(after_long_help = include_str!("help/sidecar.txt"))]
pub struct SidecarArgs {
    /// Where to store: s3://bucket/prefix, gs://…, az://container/prefix, file:///path or a folder.
    #[arg(long, env = "PERISCOPE_STORAGE", value_name = "URL")]
    storage: String,
    /// Folder for the checkpoints and the metrics queue; keep it on a volume that outlives
    /// restarts of this container.
    #[arg(
        long,
        env = "PERISCOPE_STATE_DIR",
        value_name = "DIR",
        default_value = "periscope-data/state"
    )]
    state_dir: PathBuf,
    #[command(flatten)]
    id: super::save_flags::IdentityFlags,
    /// Seconds to keep shipping after SIGTERM.
    #[arg(long, env = "PERISCOPE_DRAIN_TIMEOUT", default_value_t = 20.0)]
    drain_timeout: f64,
    /// Address for /healthz, /readyz, Prometheus /metrics and the MLflow-compatible endpoint
    /// (use 0.0.0.0:9090 for kubelet probes).
    #[arg(
        long,
        env = "PERISCOPE_LISTEN",
        default_value = "127.0.0.1:9090",
        value_name = "ADDR"
    )]
    listen: std::net::SocketAddr,
    /// Drain and exit when this file appears (the exit-code file of `periscope exec`).
    #[arg(long, env = "PERISCOPE_EXIT_WHEN_FILE", value_name = "PATH")]
    exit_when_file: Option<PathBuf>,
    /// Where `periscope localize` put the code: its recorded revision becomes params.
    #[arg(
        long,
        env = "PERISCOPE_CODE_DIR",
        value_name = "DIR",
        default_value = "/code"
    )]
    code_dir: PathBuf,
    #[command(flatten)]
    ship: ShipFlags,
}

/// Runs `periscope sidecar`.
pub async fn run(args: SidecarArgs) -> Result<ExitCode, Failure> {
    let settings = settings(args)?;
    if settings.logs.globs.is_empty()
        && settings.tfevents.is_empty()
        && settings.metrics.files.is_empty()
    {
        tracing::warn!(
            "no --logs, --tfevents or --metrics-file: only the MLflow-compatible endpoint on --listen feeds this sidecar"
        );
    }
    let (requests, stop) = Stop::channel();
    requests.on_signals().map_err(|e| {
        Failure::new(
            ErrorClass::Internal,
            format!("cannot handle signals: {e}"),
            None,
        )
    })?;
    let report = Sidecar::start(settings, stop).await?.finish().await?;
    super::save_flags::print_saves(&report.saves);
    ended(&report)
}

fn settings(args: SidecarArgs) -> Result<Settings, Failure> {
    let storage = super::storage_url::parse(&args.storage)?;
    let id = args.id;
    let mut settings = args
        .ship
        .settings(storage, args.listen, args.drain_timeout, || {
            Ok(JobIdentity::resolve(id.experiment_id, id.worker)?)
        })?;
    settings.state_dir = args.state_dir;
    settings.lifecycle.exit_when_file = args.exit_when_file;
    // The pod's /code holds exactly what its initContainer localized.
    settings.metrics.code = Record::load(&args.code_dir).sources;
    Ok(settings)
}

/// Exit 0 when everything was stored, else a failure that says what is left and how to ship it.
fn ended(report: &Report) -> Result<ExitCode, Failure> {
    if let Ending::Incomplete { backlog, reason } = report.shipping {
        return Err(Failure::new(
            ErrorClass::Network,
            format!("stopped by {reason} with {} not yet stored", human(backlog)),
            Some("the checkpoint records what was stored; start again with the same --state-dir to ship the rest".into()),
        ));
    }
    if let Ending::Incomplete { backlog, reason } = report.metrics {
        return Err(Failure::new(
            ErrorClass::Network,
            format!(
                "stopped by {reason} with {} of metrics not yet in the metastore",
                human(backlog)
            ),
            Some("the queue in --state-dir keeps them; start again with the same --state-dir to deliver them".into()),
        ));
    }
    tracing::info!(shipped = %human(report.log_bytes), metrics = report.metrics_delivered,
        "drained; everything read is stored");
    Ok(ExitCode::SUCCESS)
}
