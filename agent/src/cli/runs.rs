//! `periscope runs ls|show`: what `periscope run` did, read from the metastore and storage it used.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use periscope::error::ErrorClass;
use periscope::metrics::sqlite::{parse_datetime, MetricFilter, SqliteStore};
use periscope::retry::RetryPolicy;
use periscope::ship::reassemble;
use periscope::storage::{self, StoreOptions};

use super::format::{self, sparkline};
use super::size::human;
use super::Failure;

/// Show the runs `periscope run` recorded.
#[derive(clap::Args)]
pub struct RunsArgs {
    /// The folder `periscope run` used.
    #[arg(
        long,
        global = true,
        env = "PERISCOPE_DATA_DIR",
        default_value = "periscope-data",
        value_name = "DIR"
    )]
    data_dir: PathBuf,
    /// The metastore: its path or sqlite:///path/metastore.db. [default: <data-dir>/metastore.db]
    #[arg(long, global = true, env = "PERISCOPE_METASTORE", value_name = "URL")]
    metastore: Option<String>,
    #[command(subcommand)]
    command: RunsCommand,
}

#[derive(clap::Subcommand)]
enum RunsCommand {
    /// One line per run: experiment, status, start, duration, code revision.
    Ls,
    /// One run: status, code revision, stored logs, the MLflow runs its script made (params, tags
    /// and stored files), and each metric's last value with a sparkline.
    ///
    /// Example: periscope runs show run-20261128-170000
    Show {
        /// The experiment id (see `periscope runs ls`).
        experiment: String,
    },
}

fn io(e: std::io::Error) -> Failure {
    Failure::new(ErrorClass::Io, format!("cannot write to stdout: {e}"), None)
}

/// Runs `periscope runs`.
pub async fn run(args: RunsArgs) -> Result<ExitCode, Failure> {
    let store = super::data_dir::metastore(args.metastore.as_deref(), &args.data_dir, None)?;
    let mut out = std::io::BufWriter::new(std::io::stdout());
    match args.command {
        RunsCommand::Ls => {
            let mut rows = Vec::new();
            for e in store.experiments()? {
                let params = store.params(&e.id)?;
                // Workers that logged params, and those `run` made a folder for.
                let folders = std::fs::read_dir(args.data_dir.join("runs").join(&e.id));
                let mut workers: std::collections::BTreeSet<String> =
                    params.iter().map(|p| p.worker.clone()).collect();
                workers.extend(folders.into_iter().flatten().flatten().filter_map(|f| {
                    f.file_type()
                        .is_ok_and(|t| t.is_dir())
                        .then(|| f.file_name().to_string_lossy().into_owned())
                }));
                rows.push(vec![
                    e.id.clone(),
                    workers.into_iter().collect::<Vec<_>>().join(","),
                    e.status.clone().unwrap_or_else(|| "-".into()),
                    e.running_time.clone().unwrap_or_else(|| "-".into()),
                    duration(e.running_time.as_deref(), e.finished_time.as_deref()),
                    revision(&params).unwrap_or_else(|| "-".into()),
                ]);
            }
            format::table(
                &mut out,
                &[
                    "EXPERIMENT",
                    "WORKER",
                    "STATUS",
                    "STARTED",
                    "DURATION",
                    "CODE",
                ],
                &rows,
                &[],
            )
            .map_err(io)?;
        }
        RunsCommand::Show { experiment } => {
            let Some(e) = store
                .experiments()?
                .into_iter()
                .find(|e| e.id == experiment)
            else {
                return Err(Failure::new(
                    ErrorClass::NotFound,
                    format!("no run `{experiment}` in the metastore"),
                    Some("list runs with `periscope runs ls`".into()),
                ));
            };
            let params = store.params(&experiment)?;
            writeln!(out, "run:      {}", e.id).map_err(io)?;
            writeln!(out, "status:   {}", e.status.as_deref().unwrap_or("-")).map_err(io)?;
            writeln!(
                out,
                "started:  {}",
                e.running_time.as_deref().unwrap_or("-")
            )
            .map_err(io)?;
            writeln!(
                out,
                "duration: {}",
                duration(e.running_time.as_deref(), e.finished_time.as_deref())
            )
            .map_err(io)?;
            for p in params.iter().filter(|p| p.key.starts_with("code.")) {
                writeln!(out, "{}: {}", p.key, p.value).map_err(io)?;
            }
            let mut saves: Vec<_> = params
                .iter()
                .filter_map(|p| {
                    let n: u64 = p.key.strip_prefix("artifacts.")?.parse().ok()?;
                    Some((p.worker.as_str(), n, p.value.as_str()))
                })
                .collect();
            saves.sort();
            if !saves.is_empty() {
                writeln!(out, "\nartifacts (periscope localize --source <URL>):").map_err(io)?;
                for (worker, n, url) in saves {
                    writeln!(out, "  {worker} save {n}: {url}").map_err(io)?;
                }
            }
            script_runs(&mut out, &store, &experiment, &params)?;
            let storage = args.data_dir.join("storage");
            if storage.is_dir() {
                let url =
                    super::storage_url::parse(&storage.join(&experiment).display().to_string())?;
                let options = StoreOptions {
                    retry: RetryPolicy::none(),
                    ..StoreOptions::default()
                };
                let (objects, prefix) = storage::open(&url, &options)?;
                let logs = reassemble::ls(&objects, &prefix).await?;
                writeln!(
                    out,
                    "\nlogs (periscope logs cat {}/<path>):",
                    storage.join(&experiment).display()
                )
                .map_err(io)?;
                for l in &logs {
                    writeln!(out, "  {:<40} {:>10}", l.path, human(l.bytes)).map_err(io)?;
                }
            }
            let mut series: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
            for m in store.metrics(&experiment, &MetricFilter::default())? {
                series.entry((m.key, m.worker)).or_default().push(m.value);
            }
            writeln!(out, "\nmetrics:").map_err(io)?;
            let rows: Vec<Vec<String>> = series
                .iter()
                .map(|((key, worker), values)| {
                    let last = values.last().copied().unwrap_or(f64::NAN);
                    vec![
                        format!("  {key}"),
                        worker.clone(),
                        values.len().to_string(),
                        format::number(last),
                        sparkline(values, 24),
                    ]
                })
                .collect();
            format::table(
                &mut out,
                &["  KEY", "WORKER", "POINTS", "LAST", "TREND"],
                &rows,
                &[],
            )
            .map_err(io)?;
        }
    }
    out.flush().map_err(io)?;
    Ok(ExitCode::SUCCESS)
}

/// The MLflow runs the experiment's script made through the endpoint: one line each, then their
/// params, tags and stored files.
fn script_runs(
    out: &mut impl Write,
    store: &SqliteStore,
    experiment: &str,
    params: &[periscope::metrics::model::Param],
) -> Result<(), Failure> {
    let runs = store.script_runs(experiment)?;
    if runs.is_empty() {
        return Ok(());
    }
    writeln!(out, "\nmlflow runs (metrics below under their WORKER):").map_err(io)?;
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            vec![
                format!("  {}", r.name),
                r.run_id.clone(),
                r.experiment_name.clone().unwrap_or_else(|| "-".into()),
                r.worker_index.clone(),
                r.status.clone(),
                duration(r.start_time.as_deref(), r.end_time.as_deref()),
                r.parent_run_id
                    .as_deref()
                    .and_then(|p| runs.iter().find(|x| x.run_id == p))
                    .map_or_else(|| "-".into(), |p| p.name.clone()),
            ]
        })
        .collect();
    format::table(
        out,
        &[
            "  NAME",
            "RUN ID",
            "EXPERIMENT",
            "WORKER",
            "STATUS",
            "DURATION",
            "PARENT",
        ],
        &rows,
        &[],
    )
    .map_err(io)?;
    for r in &runs {
        let own: Vec<String> = params
            .iter()
            .filter(|p| p.worker == r.worker_index && !p.key.starts_with("mlflow."))
            .filter(|p| !p.key.starts_with("code.") && !p.key.starts_with("artifacts."))
            .map(|p| format!("{}={}", p.key, p.value))
            .collect();
        let tags: Vec<String> = store
            .script_run_tags(experiment, &r.run_id)?
            .into_iter()
            .filter(|t| !t.key.starts_with("mlflow."))
            .map(|t| format!("{}={}", t.key, t.value))
            .collect();
        let files = store.script_run_artifacts(experiment, &r.run_id)?;
        writeln!(out, "\n  {} ({}):", r.name, r.run_id).map_err(io)?;
        writeln!(out, "    params: {}", list(&own)).map_err(io)?;
        writeln!(out, "    tags:   {}", list(&tags)).map_err(io)?;
        let bytes: u64 = files.iter().map(|f| f.size).sum();
        writeln!(
            out,
            "    artifacts: {} files, {}",
            files.len(),
            human(bytes)
        )
        .map_err(io)?;
        for f in &files {
            writeln!(out, "      {:<40} {:>10}  {}", f.path, human(f.size), f.url).map_err(io)?;
        }
    }
    Ok(())
}

/// `a, b, c`, or `-` for none.
fn list(items: &[String]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.join(", ")
    }
}

/// The first recorded code revision, shortened.
fn revision(params: &[periscope::metrics::model::Param]) -> Option<String> {
    params
        .iter()
        .find(|p| p.key.starts_with("code.") && p.key.ends_with(".revision"))
        .map(|p| p.value.chars().take(12).collect())
}

fn duration(start: Option<&str>, end: Option<&str>) -> String {
    match (start.and_then(parse_datetime), end.and_then(parse_datetime)) {
        (Some(s), Some(e)) if e >= s => format!("{:.1}s", (e - s) as f64 / 1000.0),
        (Some(_), None) => "running".into(),
        _ => "-".into(),
    }
}
