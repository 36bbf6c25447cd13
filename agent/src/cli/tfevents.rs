//! `periscope tfevents`: print the scalars in TensorBoard event files, or follow a folder as it
//! grows. Reading is the library's job; this file chooses files, prints, and maps damage to the
//! exit code (8 when any file had damage, after every good scalar was printed).

mod output;

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Subcommand, ValueEnum};
use periscope::error::ErrorClass;
use periscope::tfevents::{discover, EventReader, Position, ScalarItem, TfeventsError};

use self::output::{Csv, Jsonl, ScalarSink, Table};
use super::Failure;

/// Read TensorBoard event files.
#[derive(clap::Args)]
pub struct TfeventsArgs {
    #[command(subcommand)]
    command: TfeventsCommand,
}

#[derive(Subcommand)]
enum TfeventsCommand {
    /// Print every scalar in event files, or in every event file under folders.
    ///
    /// Files are read in sorted path order and records in file order. `file` in the output is
    /// the path relative to the given folder, or the path as given for a file. Damaged records
    /// are reported on stderr; the exit code is 8 when any file had damage (all good scalars are
    /// still printed), 0 otherwise.
    Scalars(ScalarsArgs),
    /// Follow a folder (or one file) and print scalars as the job flushes them. Stop with Ctrl-C.
    Tail(TailArgs),
}

#[derive(clap::Args)]
struct ScalarsArgs {
    /// Event files, or folders searched recursively for files whose name contains `tfevents`.
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// `jsonl`: one JSON object per scalar; `csv`; `table`: one row per run and tag.
    #[arg(long, value_enum, default_value_t = Format::Jsonl)]
    format: Format,
}

#[derive(clap::Args)]
struct TailArgs {
    /// A folder searched recursively (new files are picked up), or one event file.
    #[arg(value_name = "PATH")]
    path: PathBuf,
    #[arg(long, value_enum, default_value_t = StreamFormat::Jsonl)]
    format: StreamFormat,
    /// How often to look for new records and files, in milliseconds.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    interval_ms: u64,
    /// Print only scalars written after tail starts (files found later are printed whole).
    #[arg(long)]
    skip_existing: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Jsonl,
    Csv,
    Table,
}

#[derive(Clone, Copy, ValueEnum)]
enum StreamFormat {
    Jsonl,
    Csv,
}

/// Runs `periscope tfevents`.
pub fn run(args: TfeventsArgs) -> Result<ExitCode, Failure> {
    match args.command {
        TfeventsCommand::Scalars(a) => scalars(a),
        TfeventsCommand::Tail(a) => tail(a),
    }
}

/// An event file to read and the name it is printed under.
struct Target {
    path: PathBuf,
    shown: String,
}

/// The files under one PATH argument, sorted. A folder with no event files is an error: the user
/// most likely pointed at the wrong place.
fn targets(arg: &Path, allow_empty: bool) -> Result<Vec<Target>, TfeventsError> {
    let read_err = |source| TfeventsError::Read {
        path: arg.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(arg).map_err(read_err)?;
    if !meta.is_dir() {
        return Ok(vec![Target {
            path: arg.to_path_buf(),
            shown: arg.display().to_string(),
        }]);
    }
    let found = discover(arg).map_err(read_err)?;
    if found.is_empty() && !allow_empty {
        return Err(TfeventsError::NoEventFiles {
            path: arg.to_path_buf(),
        });
    }
    Ok(found
        .into_iter()
        .map(|f| Target {
            shown: f.relative.display().to_string(),
            path: f.path,
        })
        .collect())
}

fn scalars(args: ScalarsArgs) -> Result<ExitCode, Failure> {
    let mut all = Vec::new();
    for arg in &args.paths {
        all.extend(targets(arg, false)?);
    }
    let stdout = io::BufWriter::with_capacity(256 * 1024, io::stdout().lock());
    let mut sink: Box<dyn ScalarSink> = match args.format {
        Format::Jsonl => Box::new(Jsonl::new(stdout)),
        Format::Csv => Box::new(Csv::new(stdout)),
        Format::Table => Box::new(Table::new(stdout)),
    };
    let (mut damaged_files, mut damaged_records) = (0usize, 0u64);
    for target in &all {
        let mut reader =
            EventReader::open(&target.path, Position::default()).map_err(|source| {
                TfeventsError::Read {
                    path: target.path.clone(),
                    source,
                }
            })?;
        // A one-shot read takes the file as it is now: a bad last record is final.
        reader.records_mut().set_complete(true);
        let mut damaged = 0u64;
        loop {
            let item = reader
                .next_scalars()
                .map_err(|source| TfeventsError::Read {
                    path: target.path.clone(),
                    source,
                })?;
            match item {
                ScalarItem::Event(record) => {
                    if let Err(e) = sink.record(&target.shown, &record) {
                        return stdout_closed(e);
                    }
                }
                ScalarItem::Skipped(d) => {
                    damaged += 1;
                    warn(&target.shown, &d.to_string());
                }
                ScalarItem::Stopped(d) => {
                    damaged += 1;
                    warn(&target.shown, &d.to_string());
                    break;
                }
                ScalarItem::Pending => {
                    let tail = reader.records().unread_tail();
                    if tail > 0 {
                        note(
                            &target.shown,
                            &format!(
                                "the last {tail} bytes are an incomplete record (still being \
                                 written?); not counted as damage"
                            ),
                        );
                    }
                    break;
                }
            }
        }
        if damaged > 0 {
            damaged_files += 1;
            damaged_records += damaged;
        }
    }
    if let Err(e) = sink.finish() {
        return stdout_closed(e);
    }
    if damaged_files > 0 {
        return Err(TfeventsError::Damaged {
            files: all.len(),
            damaged: damaged_files,
            records: damaged_records,
        }
        .into());
    }
    Ok(ExitCode::SUCCESS)
}

/// A reader being followed by `tail`.
struct Followed {
    shown: String,
    reader: EventReader,
    /// Print nothing until the first Pending (for `--skip-existing`).
    quiet: bool,
    /// Warned that the file stopped; it is no longer read.
    done: bool,
}

fn tail(args: TailArgs) -> Result<ExitCode, Failure> {
    let out = io::BufWriter::new(io::stdout().lock());
    let mut sink: Box<dyn ScalarSink> = match args.format {
        StreamFormat::Jsonl => Box::new(Jsonl::new(out)),
        StreamFormat::Csv => Box::new(Csv::new(out)),
    };
    let interval = Duration::from_millis(args.interval_ms.max(10));
    let mut followed: BTreeMap<PathBuf, Followed> = BTreeMap::new();
    let mut first_round = true;
    loop {
        for target in targets(&args.path, true)? {
            if followed.contains_key(&target.path) {
                continue;
            }
            let reader = match EventReader::open(&target.path, Position::default()) {
                Ok(r) => r,
                // Gone between listing and opening: the next round decides.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(TfeventsError::Read {
                        path: target.path,
                        source,
                    }
                    .into())
                }
            };
            followed.insert(
                target.path,
                Followed {
                    shown: target.shown,
                    reader,
                    quiet: first_round && args.skip_existing,
                    done: false,
                },
            );
        }
        first_round = false;
        for (path, f) in followed.iter_mut().filter(|(_, f)| !f.done) {
            loop {
                let item = f
                    .reader
                    .next_scalars()
                    .map_err(|source| TfeventsError::Read {
                        path: path.clone(),
                        source,
                    })?;
                match item {
                    ScalarItem::Event(record) => {
                        if let Some(step) = record.session_start.filter(|_| !f.quiet) {
                            note(&f.shown, &format!("session restarted at step {step}"));
                        }
                        if f.quiet {
                            continue;
                        }
                        if let Err(e) = sink.record(&f.shown, &record) {
                            return stdout_closed(e);
                        }
                    }
                    ScalarItem::Skipped(d) => warn(&f.shown, &d.to_string()),
                    ScalarItem::Stopped(d) => {
                        warn(&f.shown, &d.to_string());
                        f.done = true;
                        break;
                    }
                    ScalarItem::Pending => {
                        f.quiet = false;
                        break;
                    }
                }
            }
        }
        if let Err(e) = sink.flush() {
            return stdout_closed(e);
        }
        std::thread::sleep(interval);
    }
}

fn warn(file: &str, what: &str) {
    eprintln!("warning: {file}: {what}");
}

fn note(file: &str, what: &str) {
    eprintln!("note: {file}: {what}");
}

/// A closed pipe (`| head`) ends the output early on purpose; anything else is a failure.
fn stdout_closed(e: io::Error) -> Result<ExitCode, Failure> {
    if e.kind() == io::ErrorKind::BrokenPipe {
        Ok(ExitCode::SUCCESS)
    } else {
        Err(Failure::new(
            ErrorClass::Io,
            format!("cannot write the output: {e}"),
            None,
        ))
    }
}
