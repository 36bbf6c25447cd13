//! `periscope exec -- CMD…`: the wrapper for the main container.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use periscope::exec::{self, ExecSpec};

use super::Failure;

const AFTER_HELP: &str = "\
CMD's stdout and stderr are copied to DIR/stdout.log and DIR/stderr.log (appended, so a restarted
container continues them) and still shown on this process's own streams, so `kubectl logs` works.
SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 are forwarded to CMD (to its process group when
not on a terminal). When CMD ends and its output is on disk, its exit code is written atomically to
DIR/exit-code, which `periscope sidecar --exit-when-file` waits for. Periscope exits with CMD's code
(128 + N if signal N killed it; 127 if CMD was not found, 126 if it could not be started).

With --artifacts DIR (and --storage), each DIR is saved to <URL>/<experiment>/<worker>/artifacts/<n>/
once CMD has ended (see `periscope artifacts push --help`); a failed save exits with its own code.

Example (main container of a pod; /periscope is a shared emptyDir):
  periscope exec --capture-dir /periscope/logs -- python train.py --epochs 10";

/// Run the training command, capturing its output and exit code for the sidecar.
#[derive(clap::Args)]
#[command(after_long_help = AFTER_HELP)]
pub struct ExecArgs {
    /// Folder for stdout.log, stderr.log and exit-code (shared with the sidecar).
    #[arg(
        long,
        env = "PERISCOPE_CAPTURE_DIR",
        value_name = "DIR",
        default_value = "periscope-data/logs"
    )]
    capture_dir: PathBuf,
    #[command(flatten)]
    artifacts: super::save_flags::ArtifactsFlags,
    #[command(flatten)]
    to: super::save_flags::PushTarget,
    /// The command and its arguments, after `--`.
    #[arg(trailing_var_arg = true, required = true, value_name = "CMD")]
    command: Vec<OsString>,
}

/// Runs `periscope exec`.
pub async fn run(args: ExecArgs) -> Result<ExitCode, Failure> {
    // Checked before CMD runs, so a misconfigured pod fails at once rather than after training.
    let dirs = args.artifacts.dirs();
    let target = if dirs.is_empty() {
        None
    } else {
        Some(args.to.open()?)
    };
    let mut command = args.command.into_iter();
    // clap enforces at least one value (`required = true`).
    let program = command.next().unwrap_or_default();
    let spec = ExecSpec {
        program,
        args: command.collect(),
        capture_dir: args.capture_dir,
        env: Vec::new(),
        cwd: None,
    };
    let code = run_command(&spec).await?;
    if let Some(target) = target {
        // After the exit-code file: a sidecar may drain meanwhile; the save is this process's.
        let saves = target
            .push_all(&dirs, &args.to.state_dir, args.artifacts.tuning.settings())
            .await?;
        super::save_flags::print_saves(&saves);
    }
    Ok(super::exit_code(code))
}

/// Runs the command with our own stdout and stderr passed through, and returns its exit code.
/// A command that cannot start gets a shell's code (127 not found, 126 not executable).
pub async fn run_command(spec: &ExecSpec) -> Result<i32, Failure> {
    let ran = exec::run_here(spec).await?;
    if let Some(e) = &ran.not_started {
        eprintln!("error: {e}");
    }
    Ok(ran.code)
}
