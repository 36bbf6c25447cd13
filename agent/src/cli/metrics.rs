//! `periscope metrics ls|show`: read what the sidecar stored in the SQLite metastore, as a table
//! for people or JSONL for scripts.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use periscope::error::ErrorClass;
use periscope::metrics::model::float;
use periscope::metrics::sqlite::MetricFilter;
use periscope::metrics::SqliteStore;

use super::{format, Failure};

/// Read tracking metrics from the metastore.
#[derive(clap::Args)]
pub struct MetricsArgs {
    /// The metastore: its path or sqlite:///path/metastore.db. [default: <data-dir>/metastore.db,
    /// what `periscope run` writes, else <state-dir>/metastore.db, the sidecar's]
    #[arg(long, global = true, env = "PERISCOPE_METASTORE", value_name = "URL")]
    metastore: Option<String>,
    /// The folder `periscope run` and the sidecar use by default.
    #[arg(long, global = true, env = "PERISCOPE_DATA_DIR", value_name = "DIR", default_value = super::data_dir::DEFAULT)]
    data_dir: PathBuf,
    /// The sidecar's state folder. [default: <data-dir>/state]
    #[arg(long, global = true, env = "PERISCOPE_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// One JSON object per line instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: MetricsCommand,
}

#[derive(clap::Subcommand)]
enum MetricsCommand {
    /// List experiments; with an experiment id, list its series (key, worker, points, steps).
    ///
    /// Example: periscope metrics ls exp-42
    Ls {
        /// An experiment id.
        experiment: Option<String>,
    },
    /// Print an experiment's metric points (or its params), ordered by key, worker and step.
    ///
    /// JSONL lines are {"key","value","step","timestamp","worker"} with the timestamp in ms since
    /// the epoch and NaN/Infinity as strings.
    ///
    /// Example: periscope metrics show exp-42 --key train/loss --json
    Show {
        experiment: String,
        /// Only this key.
        #[arg(long)]
        key: Option<String>,
        /// Only this worker (e.g. worker-0).
        #[arg(long)]
        worker: Option<String>,
        /// Print the params instead of the metrics.
        #[arg(long)]
        params: bool,
    },
}

fn open(args: &MetricsArgs) -> Result<SqliteStore, Failure> {
    let state = args.state_dir.as_deref();
    super::data_dir::metastore(args.metastore.as_deref(), &args.data_dir, state)
}

fn json_number(v: f64) -> serde_json::Value {
    serde_json::Number::from_f64(v)
        .map(serde_json::Value::Number)
        .unwrap_or_else(|| serde_json::Value::String(float::name(v).into()))
}

/// Runs `periscope metrics`.
pub fn run(args: MetricsArgs) -> Result<ExitCode, Failure> {
    let store = open(&args)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let json = args.json;
    let written = match &args.command {
        MetricsCommand::Ls { experiment: None } => {
            let rows = store.experiments()?;
            if json {
                rows.iter().try_for_each(|r| {
                    writeln!(out, "{}", serde_json::to_string(r).unwrap_or_default())
                })
            } else {
                let cells: Vec<Vec<String>> = rows
                    .iter()
                    .map(|r| {
                        let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
                        vec![
                            r.id.clone(),
                            opt(&r.status),
                            opt(&r.running_time),
                            opt(&r.finished_time),
                            r.metrics.to_string(),
                        ]
                    })
                    .collect();
                format::table(
                    &mut out,
                    &["EXPERIMENT", "STATUS", "RUNNING", "FINISHED", "METRICS"],
                    &cells,
                    &[],
                )
            }
        }
        MetricsCommand::Ls {
            experiment: Some(experiment),
        } => {
            require(&store, experiment)?;
            let rows = store.series(experiment)?;
            if json {
                rows.iter().try_for_each(|r| {
                    writeln!(out, "{}", serde_json::to_string(r).unwrap_or_default())
                })
            } else {
                let cells: Vec<Vec<String>> = rows
                    .iter()
                    .map(|r| {
                        vec![
                            r.key.clone(),
                            r.worker.clone(),
                            r.points.to_string(),
                            r.first_step.to_string(),
                            r.last_step.to_string(),
                        ]
                    })
                    .collect();
                format::table(
                    &mut out,
                    &["KEY", "WORKER", "POINTS", "FIRST STEP", "LAST STEP"],
                    &cells,
                    &[],
                )
            }
        }
        MetricsCommand::Show {
            experiment,
            params: true,
            ..
        } => {
            require(&store, experiment)?;
            let rows = store.params(experiment)?;
            if json {
                rows.iter().try_for_each(|p| {
                    writeln!(out, "{}", serde_json::to_string(p).unwrap_or_default())
                })
            } else {
                let cells: Vec<Vec<String>> = rows
                    .iter()
                    .map(|p| vec![p.key.clone(), p.worker.clone(), p.value.clone()])
                    .collect();
                format::table(&mut out, &["KEY", "WORKER", "VALUE"], &cells, &[])
            }
        }
        MetricsCommand::Show {
            experiment,
            key,
            worker,
            params: false,
        } => {
            require(&store, experiment)?;
            let filter = MetricFilter {
                key: key.clone(),
                worker: worker.clone(),
            };
            let rows = store.metrics(experiment, &filter)?;
            if json {
                rows.iter().try_for_each(|m| {
                    let line = serde_json::json!({
                        "key": m.key,
                        "value": json_number(m.value),
                        "step": m.step,
                        "timestamp": m.timestamp_ms,
                        "worker": m.worker,
                    });
                    writeln!(out, "{line}")
                })
            } else {
                let cells: Vec<Vec<String>> = rows
                    .iter()
                    .map(|m| {
                        vec![
                            m.key.clone(),
                            m.worker.clone(),
                            m.step.to_string(),
                            format::time(m.timestamp_ms),
                            format::number(m.value),
                        ]
                    })
                    .collect();
                format::table(
                    &mut out,
                    &["KEY", "WORKER", "STEP", "TIMESTAMP", "VALUE"],
                    &cells,
                    &[],
                )
            }
        }
    };
    written
        .and_then(|()| out.flush())
        .map_err(|e| Failure::new(ErrorClass::Io, format!("cannot write to stdout: {e}"), None))?;
    Ok(ExitCode::SUCCESS)
}

fn require(store: &SqliteStore, experiment: &str) -> Result<(), Failure> {
    if store.has_experiment(experiment)? {
        Ok(())
    } else {
        Err(Failure::new(
            ErrorClass::NotFound,
            format!("no experiment `{experiment}` in the metastore"),
            Some("`periscope metrics ls` lists the experiments it holds".into()),
        ))
    }
}
