//! A server process the harness started, in its own process group, killed with its children when
//! the handle is dropped (moto and Azurite start helper processes of their own).

use std::process::{Child, Command};

/// A running server. Invariant: the child leads its own process group.
pub struct ServerProcess {
    child: Child,
}

impl ServerProcess {
    /// Spawns `cmd` as the leader of a new process group.
    pub fn spawn(cmd: &mut Command, what: &str) -> ServerProcess {
        use std::os::unix::process::CommandExt;
        let child = cmd
            .process_group(0)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
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
