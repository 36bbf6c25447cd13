//! `periscope exec -- CMD…`: the wrapper for the main container.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use std::time::Duration;

use periscope::artifacts::{Saver, SignalClock};
use periscope::error::ErrorClass;
use periscope::exec::{self, ExecSpec};
use periscope::job::{self, Fallback, Lookup};

use super::save_flags::{describe_restore, print_saving};
use super::Failure;

const AFTER_HELP: &str = "\
CMD's stdout and stderr are copied to DIR/stdout.log and DIR/stderr.log (appended, so a restarted
container continues them) and still shown on this process's own streams, so `kubectl logs` works.
SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 are forwarded to CMD (to its process group when
not on a terminal). When CMD ends and its output is on disk, its exit code is written atomically to
DIR/exit-code, which `periscope sidecar --exit-when-file` waits for. Periscope exits with CMD's code
(128 + N if signal N killed it; 127 if CMD was not found, 126 if it could not be started).

Before CMD starts, the worker name this container sees (--worker, TF_CONFIG, CLUSTER_SPEC, RANK,
JOB_COMPLETION_INDEX, PERISCOPE_REPLICA_TYPE/INDEX, else the hostname) is written to DIR/worker.json,
for a sidecar whose own environment names none (`periscope sidecar --worker-file DIR/worker.json`).

With --artifacts DIR (and --storage), each DIR is saved to <URL>/<experiment>/<worker>/artifacts/<n>/
once CMD has ended (see `periscope artifacts push --help`); a failed save exits with its own code.
With --artifacts-every and --artifacts-marker it is saved while CMD runs too; --restore DIR first
brings the latest save into an empty DIR, so a restarted job resumes from it.

A save holds each file as one read saw it: a file whose size, mtime or inode changed while it was
read is read again, and one that keeps changing or vanishes makes the whole save be taken again (3
times, then at the next tick); only a save with its manifest written counts. A checkpoint written in
place can look still for a moment while half-written: write it to a temporary name and rename it
(torch.save(m, 'ckpt.tmp'); os.replace('ckpt.tmp', 'ckpt')), or touch the marker once it is written.

After a stop signal the final save has --final-save-timeout; a save it cuts is continued by the next
start with the same --state-dir (keep it on a volume that outlives the container).

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
    #[command(flatten)]
    restore: super::save_flags::RestoreFlag,
    /// The command and its arguments, after `--`.
    #[arg(trailing_var_arg = true, required = true, value_name = "CMD")]
    command: Vec<OsString>,
}

/// Runs `periscope exec`.
pub async fn run(args: ExecArgs) -> Result<ExitCode, Failure> {
    // Checked before CMD runs, so a misconfigured pod fails at once rather than after training.
    let dirs = args.artifacts.dirs();
    let target = match dirs.is_empty() && args.restore.restore.is_none() {
        true => None,
        false => Some(args.to.open(Fallback::Hostname)?),
    };
    let tuning = args.artifacts.tuning.settings();
    if let (Some(dir), Some(target)) = (&args.restore.restore, &target) {
        let restored = target.restore(dir, tuning.concurrency).await?;
        eprintln!("{}", describe_restore(dir, &restored, &target.shown_base()));
    }
    let lookup = Lookup {
        fallback: Fallback::Hostname,
        ..Lookup::vm()
    };
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    let worker = job::resolve_worker(args.to.store.id.worker.clone(), &env, &lookup)?;
    job::publish(&args.capture_dir, &worker).map_err(|e| {
        let message = format!(
            "cannot publish the worker name in `{}`: {e}",
            args.capture_dir.display()
        );
        Failure::new(ErrorClass::Io, message, None)
    })?;
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
    let Some(target) = target.filter(|_| !dirs.is_empty()) else {
        return Ok(super::exit_code(run_command(&spec).await?));
    };
    let internal = |e: std::io::Error| Failure::new(ErrorClass::Internal, e.to_string(), None);
    let saver = Saver {
        target,
        dirs,
        state_dir: args.to.state_dir,
        tuning,
        schedule: args.artifacts.schedule.settings(Duration::from_secs(1)),
    };
    // The final save follows the exit-code file (a sidecar may drain meanwhile); it is this
    // process's, and its deadline counts from the first stop signal.
    let (ended, over) = tokio::sync::oneshot::channel::<()>();
    let task = saver
        .spawn(
            std::future::ready(true),
            async move {
                let _ = over.await;
            },
            SignalClock::start().map_err(internal)?,
        )
        .map_err(internal)?;
    let code = run_command(&spec).await;
    drop(ended);
    print_saving(&task.join().await?)?;
    Ok(super::exit_code(code?))
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
