//! `periscope logs cat|ls`: read shipped logs back from storage.

use std::io::Write;
use std::process::ExitCode;

use periscope::error::ErrorClass;
use periscope::retry::RetryPolicy;
use periscope::ship::reassemble;
use periscope::storage::{self, StoreOptions};

use super::size::human;
use super::Failure;

/// Read logs shipped by the sidecar.
#[derive(clap::Args)]
pub struct LogsArgs {
    #[command(subcommand)]
    command: LogsCommand,
}

#[derive(clap::Subcommand)]
enum LogsCommand {
    /// Write every byte ever written to one log path (all rotated generations, in order) to stdout.
    ///
    /// Example: periscope logs cat s3://ml-logs/jobs/exp-42/worker-0/logs/stdout.log
    Cat {
        /// <storage>/<experiment>/<worker>/logs/<path>
        url: String,
    },
    /// List the logs stored under an experiment (or one of its workers).
    ///
    /// Example: periscope logs ls s3://ml-logs/jobs/exp-42
    Ls {
        /// <storage>/<experiment>[/<worker>]
        url: String,
        /// One JSON object per log instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `periscope logs`.
pub async fn run(args: LogsArgs) -> Result<ExitCode, Failure> {
    let options = StoreOptions {
        retry: RetryPolicy {
            attempts: 3,
            ..RetryPolicy::default()
        },
        ..StoreOptions::default()
    };
    match args.command {
        LogsCommand::Cat { url } => {
            let url = super::storage_url::parse(&url)?;
            let (store, folder) = storage::open(&url, &options)?;
            let mut out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout());
            let report = reassemble::cat(&store, &folder, &mut out).await?;
            out.flush().map_err(|e| {
                Failure::new(ErrorClass::Io, format!("cannot write to stdout: {e}"), None)
            })?;
            if report.gaps.is_empty() {
                Ok(ExitCode::SUCCESS)
            } else {
                for g in &report.gaps {
                    eprintln!(
                        "warning: generation {} is missing bytes {}..{} ({})",
                        g.generation,
                        g.start,
                        g.end,
                        human(g.end - g.start)
                    );
                }
                Err(Failure::new(
                    ErrorClass::Damaged,
                    format!("{} gap(s) in the stored log", report.gaps.len()),
                    None,
                ))
            }
        }
        LogsCommand::Ls { url, json } => {
            let url = super::storage_url::parse(&url)?;
            let (store, prefix) = storage::open(&url, &options)?;
            let logs = reassemble::ls(&store, &prefix).await?;
            if json {
                for l in &logs {
                    println!("{}", serde_json::to_string(l).unwrap_or_default());
                }
            } else {
                let width = logs.iter().map(|l| l.path.len()).max().unwrap_or(4).max(4);
                println!(
                    "{:width$}  {:>5}  {:>6}  {:>10}  {:>10}  LAST CHUNK",
                    "PATH", "GENS", "CHUNKS", "BYTES", "STORED"
                );
                for l in &logs {
                    println!(
                        "{:width$}  {:>5}  {:>6}  {:>10}  {:>10}  {}",
                        l.path,
                        l.generations,
                        l.chunks,
                        human(l.bytes),
                        human(l.stored_bytes),
                        l.last_modified
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
