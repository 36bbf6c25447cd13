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
use periscope::tfevents::discover::split_segment_name;
use periscope::tfevents::{
    discover, Damage, DamageSummary, EventReader, Position, ScalarItem, TfeventsError,
};

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
    /// the path relative to the given folder, or the path as given for a file; the segments of a
    /// file mirrored by the sidecar are read in order and named as that file. Damaged records
    /// are summarised on stderr, one line per file; the exit code is 8 when any file had damage
    /// (all good scalars are still printed), 0 otherwise.
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

/// An event file to read and the name it is printed under. Invariant: `continues` is set for a
/// stored segment after a file's first, which is read as the rest of the file `shown` names.
struct Target {
    path: PathBuf,
    shown: String,
    continues: bool,
}

impl Target {
    /// Where to start reading: a later segment starts with the tag kinds the file's records
    /// before it declared (TF2 declares a tag's kind on its first value only).
    fn start(&self, before: Option<(&str, Position)>) -> Position {
        match before {
            Some((shown, position)) if self.continues && shown == self.shown => Position {
                offset: 0,
                tags: position.tags,
            },
            _ => Position::default(),
        }
    }
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
            continues: false,
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
        .map(|f| {
            // A stored segment is named as the event file it is part of, so a mirrored tree
            // prints as the job's folder does.
            let name = f
                .relative
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let (file, start) = split_segment_name(&name);
            Target {
                shown: f.relative.with_file_name(file).display().to_string(),
                continues: start > 0,
                path: f.path,
            }
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
    let mut before: Option<(&str, Position)> = None;
    for target in &all {
        let mut reader =
            EventReader::open(&target.path, target.start(before.take())).map_err(|source| {
                TfeventsError::Read {
                    path: target.path.clone(),
                    source,
                }
            })?;
        // A one-shot read takes the file as it is now: a bad last record is final.
        reader.records_mut().set_complete(true);
        let (mut skipped, mut stopped) = (DamageSummary::default(), None);
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
                ScalarItem::Skipped(d) => skipped.add(d),
                ScalarItem::Stopped(d) => {
                    stopped = Some(d);
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
        report_damage(&target.shown, &skipped, stopped);
        let damaged = skipped.count + u64::from(stopped.is_some());
        if damaged > 0 {
            damaged_files += 1;
            damaged_records += damaged;
        }
        before = Some((&target.shown, reader.position()));
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

/// A file being followed by `tail`. Invariant: `reader` is opened on the first round that reads
/// the file, after the files before it in path order were read in that round.
struct Followed {
    target: Target,
    reader: Option<EventReader>,
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
            if !followed.contains_key(&target.path) {
                followed.insert(
                    target.path.clone(),
                    Followed {
                        target,
                        reader: None,
                        quiet: first_round && args.skip_existing,
                        done: false,
                    },
                );
            }
        }
        first_round = false;
        // What was read of the file before, for a segment that continues it.
        let mut before: Option<(String, Position)> = None;
        for (path, f) in followed.iter_mut() {
            if f.reader.is_none() {
                let start = f
                    .target
                    .start(before.as_ref().map(|(s, p)| (s.as_str(), p.clone())));
                match EventReader::open(path, start) {
                    Ok(r) => f.reader = Some(r),
                    // Gone between listing and opening: the next round decides.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(source) => {
                        return Err(TfeventsError::Read {
                            path: path.clone(),
                            source,
                        }
                        .into())
                    }
                }
            }
            let Some(reader) = f.reader.as_mut() else {
                continue;
            };
            let (mut skipped, mut stopped) = (DamageSummary::default(), None);
            while !f.done {
                let item = reader
                    .next_scalars()
                    .map_err(|source| TfeventsError::Read {
                        path: path.clone(),
                        source,
                    })?;
                match item {
                    ScalarItem::Event(record) => {
                        if let Some(step) = record.session_start.filter(|_| !f.quiet) {
                            note(
                                &f.target.shown,
                                &format!("session restarted at step {step}"),
                            );
                        }
                        if f.quiet {
                            continue;
                        }
                        if let Err(e) = sink.record(&f.target.shown, &record) {
                            return stdout_closed(e);
                        }
                    }
                    ScalarItem::Skipped(d) => skipped.add(d),
                    ScalarItem::Stopped(d) => {
                        stopped = Some(d);
                        f.done = true;
                    }
                    ScalarItem::Pending => {
                        f.quiet = false;
                        break;
                    }
                }
            }
            report_damage(&f.target.shown, &skipped, stopped);
            before = Some((f.target.shown.clone(), reader.position()));
        }
        if let Err(e) = sink.flush() {
            return stdout_closed(e);
        }
        std::thread::sleep(interval);
    }
}

/// One line for the records skipped in a file (or in one round of `tail`), however many, and one
/// where reading stopped.
fn report_damage(file: &str, skipped: &DamageSummary, stopped: Option<Damage>) {
    if !skipped.is_empty() {
        warn(file, &skipped.to_string());
    }
    if let Some(d) = stopped {
        warn(file, &d.to_string());
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
