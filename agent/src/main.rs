//! The `periscope` command line: parse, configure logging, dispatch, and turn failures into a
//! one-line message, a documented exit code and the Kubernetes termination message.
//!
//! Everything a command prints for people lives in `cli/`; the library never prints. Each
//! command's flags become plain settings there, and the library assembles and runs them.

mod cli;

/// The static binary's allocator (see `agent/Cargo.toml`): it also serves libgit2 and zlib, whose
/// `malloc` it replaces.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Makes mimalloc give freed pages back at once rather than after a delay that only later
/// allocations end: a sidecar that goes idle would otherwise keep its peak (16 MiB against 8 MiB
/// idle RSS), and speed was the same either way.
#[cfg(target_env = "musl")]
fn lean_allocator() {
    // `mi_option_purge_delay` in mimalloc 3's `mi_option_e` (libmimalloc-sys names no constant
    // for it); Cargo.lock pins the version this index was read from.
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: setting an option is a plain store into mimalloc's option table, valid at any time.
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, 0) };
}

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use periscope::error::ErrorClass;

use crate::cli::Failure;

/// Periscope: gets code into ML training pods and ships what they produce.
///
/// In a pod: `localize` as the initContainer, `exec` around the training command, `sidecar`
/// beside it (ship logs, tf.events and metrics; save artifacts). On a VM: `run` does all three in
/// one process. Read back what was stored with `runs`, `logs`, `metrics`, `tfevents`; save models
/// with `artifacts`; put the binary on a shared volume with `install`. Every flag can also be set
/// with the environment variable shown in its help.
#[derive(Parser)]
#[command(
    name = "periscope",
    version,
    propagate_version = true,
    max_term_width = 100
)]
#[command(after_long_help = EXIT_CODES_HELP)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// The help heading of the settings every command shares, shown after each command's own.
const GLOBAL: &str = "Global options";

/// Settings every command shares.
#[derive(clap::Args)]
struct GlobalArgs {
    /// Log line format on stderr: `text` for people, `json` for log collectors.
    #[arg(long, global = true, env = "PERISCOPE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, help_heading = GLOBAL)]
    log_format: LogFormat,
    /// Log level (error, warn, info, debug, trace), or per target such as `periscope=debug,warn`.
    #[arg(
        long,
        global = true,
        help_heading = GLOBAL,
        env = "PERISCOPE_LOG_LEVEL",
        default_value = "info"
    )]
    log_level: String,
    /// Where the final error is also written for Kubernetes to show in `kubectl describe pod`.
    /// Default: /dev/termination-log when it exists.
    #[arg(
        long,
        global = true,
        help_heading = GLOBAL,
        env = "PERISCOPE_TERMINATION_LOG",
        value_name = "FILE"
    )]
    termination_log: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Fetch code from git, an HTTP(S) archive or an object store into a folder, atomically.
    Localize(Box<cli::localize::LocalizeArgs>),
    /// Run the training command, capturing stdout/stderr and the exit code for the sidecar.
    Exec(cli::exec::ExecArgs),
    /// Ship logs, tf.events and metrics exactly once until the job ends, then drain.
    Sidecar(Box<cli::sidecar::SidecarArgs>),
    /// Save model artifacts to storage as numbered, verified saves: `push DIR`.
    Artifacts(cli::artifacts::ArtifactsArgs),
    /// Read back logs the sidecar stored: `cat` one log, `ls` an experiment.
    Logs(cli::logs::LogsArgs),
    /// Localize, run a command and ship what it writes, all in one process (for bare VMs).
    Run(Box<cli::run::RunArgs>),
    /// Read tracking metrics from the metastore: `ls` experiments or series, `show` points.
    Metrics(cli::metrics::MetricsArgs),
    /// Show what `periscope run` recorded: `ls` the runs, `show` one (status, code, logs, metrics).
    Runs(cli::runs::RunsArgs),
    /// Read TensorBoard event files: print scalars, or follow a folder as it grows.
    Tfevents(cli::tfevents::TfeventsArgs),
    /// Copy this binary into a folder, so the pod's main container can run `periscope exec`.
    Install(cli::install::InstallArgs),
    /// Print the version, the build target and the enabled features.
    Version,
}

const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  internal error (a bug: please report it)
  2  usage or configuration error (bad flag, malformed source URL or option)
  3  not found (HTTP 404, unknown git ref, missing object or bucket)
  4  authentication or authorization refused (HTTP 401/403, git credentials, SSH host key)
  5  integrity failure (checksum mismatch, unsafe archive entry, size or file limit exceeded)
  6  network failure after all retries (unreachable server, repeated 5xx, timeouts)
  7  local filesystem failure (permissions, disk full)
  8  input read to its end, but some of it was damaged (e.g. corrupt tf.events records)";

/// The exit code for each class of failure; documented in `EXIT_CODES_HELP` and the README.
fn exit_code(class: ErrorClass) -> u8 {
    match class {
        ErrorClass::Internal => 1,
        ErrorClass::Usage => 2,
        ErrorClass::NotFound => 3,
        ErrorClass::Auth => 4,
        ErrorClass::Integrity => 5,
        ErrorClass::Network => 6,
        ErrorClass::Io => 7,
        ErrorClass::Damaged => 8,
    }
}

/// A hint for each class, used when the error itself has nothing more specific to say.
fn generic_hint(class: ErrorClass) -> &'static str {
    match class {
        ErrorClass::Internal => "this is a bug in Periscope; please report it with the log above",
        ErrorClass::Usage => "run with --help to see the expected flags and formats",
        ErrorClass::NotFound => "check the URL, the ref or the object key",
        ErrorClass::Auth => "check the credentials (flags, environment or mounted Secret files)",
        ErrorClass::Integrity => {
            "the data was refused to keep the destination safe; check the source"
        }
        ErrorClass::Network => "check that the server is reachable from here and retry later",
        ErrorClass::Io => "check permissions and free space on the destination",
        ErrorClass::Damaged => "the output above is complete up to the damage reported on stderr",
    }
}

fn main() -> ExitCode {
    #[cfg(target_env = "musl")]
    lean_allocator();
    let cli = Cli::parse();
    init_logging(&cli.global);
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(failure) => report(&failure, cli.global.termination_log.as_deref()),
    }
}

fn dispatch(command: Command) -> Result<ExitCode, Failure> {
    match command {
        Command::Localize(args) => cli::block_on(cli::localize::run(*args)),
        Command::Exec(args) => cli::block_on(cli::exec::run(args)),
        Command::Sidecar(args) => cli::block_on(cli::sidecar::run(*args)),
        Command::Artifacts(args) => cli::block_on(cli::artifacts::run(args)),
        Command::Logs(args) => cli::block_on(cli::logs::run(args)),
        Command::Run(args) => cli::block_on(cli::run::run(*args)),
        Command::Runs(args) => cli::block_on(cli::runs::run(args)),
        Command::Tfevents(args) => cli::tfevents::run(args),
        Command::Install(args) => cli::install::run(args),
        Command::Metrics(args) => cli::metrics::run(args),
        Command::Version => {
            cli::version::print();
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn report(failure: &Failure, termination_log: Option<&Path>) -> ExitCode {
    let hint = failure
        .hint
        .clone()
        .unwrap_or_else(|| generic_hint(failure.class).to_string());
    let line = format!("error: {}\nhint: {hint}\n", failure.message);
    // Ignore a closed stderr: the exit code still tells the story.
    let _ = std::io::stderr().write_all(line.as_bytes());
    let path = termination_log
        .map(Path::to_path_buf)
        .or_else(|| Some(PathBuf::from("/dev/termination-log")).filter(|p| p.exists()));
    if let Some(path) = path {
        if let Err(e) = std::fs::write(&path, &line) {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the termination message");
        }
    }
    ExitCode::from(exit_code(failure.class))
}

fn init_logging(global: &GlobalArgs) {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    // `Targets` reads `info` or `periscope=debug,warn` without a regex engine (which would cost the
    // static binary half a megabyte).
    let mut filter: Targets = global
        .log_level
        .parse()
        .unwrap_or_else(|_| Targets::new().with_default(LevelFilter::INFO));
    // object_store's retry lines name no host and repeat the whole error; Periscope's store client
    // says each failed try in one short line instead. `--log-level object_store=info` shows them.
    if !global.log_level.contains("object_store") {
        filter = filter.with_target("object_store", LevelFilter::WARN);
    }
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    let registry = tracing_subscriber::registry().with(filter);
    match global.log_format {
        LogFormat::Text => registry.with(layer).init(),
        LogFormat::Json => registry.with(layer.json().flatten_event(true)).init(),
    }
}
