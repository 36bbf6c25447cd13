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
    /// A rotated name (`app.log.1`, `app.log.2.gz` when the glob matches them) gives the bytes of
    /// the files that were at that name, read from where they are stored once (decompressed:
    /// the bytes the application wrote). Paths are spelled as `logs ls` prints them, or unescaped.
    /// The path may also come as a second argument, and may leave out the worker and `logs/`
    /// when only one stored log ends with it; a name that is not stored gets the list of those
    /// that are.
    ///
    /// Example: periscope logs cat s3://ml-logs/jobs/exp-42/worker-0/logs/stdout.log
    /// Example: periscope logs cat s3://ml-logs/jobs/exp-42 stdout.log
    Cat {
        /// <storage>/<experiment>/<worker>/logs/<path>, or <storage>/<experiment> with NAME
        url: String,
        /// The log's path under the URL (as `logs ls` prints it, or its end: `app.log`)
        name: Option<String>,
        /// Only this generation of the path (`logs ls` names a rotated name's newest).
        #[arg(long, value_name = "N")]
        generation: Option<u64>,
    },
    /// List the logs stored under an experiment (or one of its workers).
    ///
    /// A rotated name whose bytes are stored once under the path where the file was first seen
    /// (a renamed file, a copytruncate copy, a compressed .gz) says in ROTATION where its newest
    /// generation's bytes are; BYTES counts only a path's own chunks, so the column adds up to
    /// what was written. Each PATH works as it is printed with `logs cat`.
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
        LogsCommand::Cat {
            url,
            name,
            generation,
        } => {
            let url = super::storage_url::parse(&log_url(&url, name.as_deref()))?;
            let (store, folder) = storage::open(&url, &options)?;
            let mut out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout());
            let report = reassemble::cat(&store, &folder, generation, &mut out).await?;
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
                let width = logs
                    .iter()
                    .map(|l| l.path.chars().count())
                    .max()
                    .unwrap_or(4)
                    .max(4);
                println!(
                    "{:width$}  {:>5}  {:>6}  {:>10}  {:>10}  {:20}  ROTATION",
                    "PATH", "GENS", "CHUNKS", "BYTES", "STORED", "LAST CHUNK"
                );
                for l in &logs {
                    println!(
                        "{:width$}  {:>5}  {:>6}  {:>10}  {:>10}  {:20}  {}",
                        l.path,
                        l.generations,
                        l.chunks,
                        human(l.bytes),
                        human(l.stored_bytes),
                        l.last_modified,
                        rotation_note(l)
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `url` with `name` appended, without empty path segments (a name copied with its leading `/`,
/// a URL ending with one): object keys have none.
fn log_url(url: &str, name: Option<&str>) -> String {
    let joined = match name {
        Some(n) => format!("{url}/{n}"),
        None => url.to_string(),
    };
    let (head, path) = match joined.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
            (format!("{scheme}://{authority}/"), path.to_string())
        }
        None if joined.starts_with('/') => ("/".to_string(), joined),
        None => (String::new(), joined),
    };
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    format!("{head}{}", parts.join("/"))
}

/// What `ls` says of a path's rotated generations: where the newest is stored.
fn rotation_note(l: &reassemble::StoredLog) -> String {
    let Some(r) = &l.rotated_from else {
        return String::new();
    };
    let mut note = format!(
        "generation {} rotated from {}, generation {}",
        r.generation, r.path, r.from_generation
    );
    if l.rotated_generations > 1 {
        note.push_str(&format!(" ({} earlier rotated)", l.rotated_generations - 1));
    }
    note
}

#[cfg(test)]
mod tests {
    use super::log_url;

    #[test]
    fn a_name_copied_with_its_slash_makes_no_empty_segment() {
        for (url, name, want) in [
            ("s3://b/exp", Some("/app.log"), "s3://b/exp/app.log"),
            (
                "s3://b/exp/",
                Some("worker-0/logs/app.log"),
                "s3://b/exp/worker-0/logs/app.log",
            ),
            (
                "file:///tmp/s/exp//w/logs//app.log",
                None,
                "file:///tmp/s/exp/w/logs/app.log",
            ),
            ("/tmp/s/exp", Some("/app.log"), "/tmp/s/exp/app.log"),
            ("store/exp", Some("app.log"), "store/exp/app.log"),
        ] {
            assert_eq!(log_url(url, name), want, "{url} {name:?}");
        }
    }
}
