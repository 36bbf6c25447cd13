//! Stop requests (SIGTERM, SIGINT) as a counter the library's loops can watch.

use periscope::error::ErrorClass;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use super::Failure;

/// Counts SIGTERM and SIGINT as they arrive.
pub fn stop_requests() -> Result<watch::Receiver<u32>, Failure> {
    let (tx, rx) = watch::channel(0u32);
    let mut term = signal(SignalKind::terminate()).map_err(|e| {
        Failure::new(
            ErrorClass::Internal,
            format!("cannot handle SIGTERM: {e}"),
            None,
        )
    })?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| {
        Failure::new(
            ErrorClass::Internal,
            format!("cannot handle SIGINT: {e}"),
            None,
        )
    })?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                Some(()) = term.recv() => {}
                Some(()) = int.recv() => {}
                else => break,
            }
            tx.send_modify(|n| *n += 1);
        }
    });
    Ok(rx)
}
