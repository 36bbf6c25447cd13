//! A server process the harness started, in its own process group, killed with its children when
//! the handle is dropped (moto and Azurite start helper processes of their own).

use std::process::{Child, Command, Stdio};

/// A running server. Invariant: the child leads its own process group.
pub struct ServerProcess {
    child: Child,
}

impl ServerProcess {
    /// Spawns `cmd` as the leader of a new process group.
    pub fn spawn(cmd: &mut Command, what: &str) -> ServerProcess {
        Self::spawn_with(cmd, what, Stdio::null(), Stdio::null())
    }

    /// [`ServerProcess::spawn`], with the server's stdout and stderr appended to `log`.
    pub fn spawn_logged(cmd: &mut Command, what: &str, log: &std::path::Path) -> ServerProcess {
        let file = std::fs::File::options()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", log.display()));
        let out = file.try_clone().expect("clone log file");
        Self::spawn_with(cmd, what, out.into(), file.into())
    }

    fn spawn_with(cmd: &mut Command, what: &str, out: Stdio, err: Stdio) -> ServerProcess {
        use std::os::unix::process::CommandExt;
        let child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        ServerProcess { child }
    }

    /// True while the process has not exited (a server that lost the race for its port exits).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // SAFETY: signals the process group this handle created; no memory is involved.
        unsafe {
            libc::kill(-(self.child.id() as i32), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}
