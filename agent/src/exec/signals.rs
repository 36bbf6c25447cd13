//! Forwarding signals to the child while waiting for it.
//!
//! In a pod, Periscope may be PID 1 of the main container: the kubelet's SIGTERM reaches only us,
//! and the job must get it to save a checkpoint. On a terminal, Ctrl-C already reaches the whole
//! foreground process group, the command included, so SIGINT is caught (Periscope must live on to
//! record how the command ended and drain) but not forwarded a second time. SIGHUP (the terminal
//! closed, ssh dropped) is forwarded like SIGTERM, and never ends Periscope by itself.

use std::io;
use std::io::IsTerminal;
use std::process::ExitStatus;

use tokio::process::Child;
use tokio::signal::unix::{signal, SignalKind};

/// Whether stdin is a terminal (a person is running us interactively).
pub fn stdin_is_terminal() -> bool {
    io::stdin().is_terminal()
}

/// Waits for the child, forwarding SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2. With
/// `to_group`, signals go to the child's process group (it leads its own); without it (on a
/// terminal, where the child shares our group) SIGINT and SIGQUIT, which the terminal sends to the
/// whole group, are caught and not sent again.
pub async fn wait_forwarding(
    child: &mut Child,
    pid: Option<u32>,
    to_group: bool,
) -> io::Result<ExitStatus> {
    let kinds = [
        (SignalKind::terminate(), libc::SIGTERM),
        (SignalKind::interrupt(), libc::SIGINT),
        (SignalKind::hangup(), libc::SIGHUP),
        (SignalKind::quit(), libc::SIGQUIT),
        (SignalKind::user_defined1(), libc::SIGUSR1),
        (SignalKind::user_defined2(), libc::SIGUSR2),
    ];
    let mut streams = Vec::new();
    for (kind, number) in kinds {
        let from_terminal = matches!(number, libc::SIGINT | libc::SIGQUIT);
        streams.push((signal(kind)?, number, to_group || !from_terminal));
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut listeners = Vec::new();
    for (mut stream, number, pass_on) in streams {
        let tx = tx.clone();
        listeners.push(tokio::spawn(async move {
            while stream.recv().await.is_some() {
                if !pass_on {
                    tracing::info!(
                        signal = number,
                        "the terminal's signal reached the command too; waiting for it to end"
                    );
                    continue;
                }
                if tx.send(number).is_err() {
                    break;
                }
            }
        }));
    }
    drop(tx);
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            Some(number) = rx.recv() => forward(pid, number, to_group),
        }
    };
    for l in listeners {
        l.abort();
    }
    status
}

fn forward(pid: Option<u32>, number: i32, to_group: bool) {
    let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) else {
        return;
    };
    let target = if to_group { -pid } else { pid };
    tracing::info!(signal = number, pid, "forwarding signal to the command");
    // SAFETY: kill(2) has no memory-safety preconditions.
    let rc = unsafe { libc::kill(target, number) };
    if rc != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "forwarding signal failed (the command may have exited)");
    }
}
