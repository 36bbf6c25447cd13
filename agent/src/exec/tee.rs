//! Copying one of the child's streams to a capture file and to our own stream.
//!
//! The capture file is what ships, so it comes first: a closed or full terminal on our side must
//! never lose a byte from the file. Each chunk is written to the file as soon as it is read, so the
//! sidecar can ship it while the job runs.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::task::JoinHandle;

/// Opens a capture file for appending (a restarted container continues the same file).
pub fn open_capture(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Copies `from` to `file` and `pass` until end of stream; returns the bytes captured.
pub async fn copy<R, W>(mut from: R, mut pass: W, mut file: File) -> u64
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    let mut pass_ok = true;
    let mut file_ok = true;
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(error = %e, "reading the command's output failed");
                break;
            }
        };
        if file_ok {
            // A small blocking write per chunk: page-cache speed, and it keeps the order exact.
            if let Err(e) = file.write_all(&buf[..n]) {
                tracing::error!(error = %e, "cannot write to the capture file; output is still passed through");
                file_ok = false;
            } else {
                total += n as u64;
            }
        }
        if pass_ok && (pass.write_all(&buf[..n]).await.is_err() || pass.flush().await.is_err()) {
            // Our stdout closed (e.g. piped into `head`): keep capturing.
            pass_ok = false;
        }
    }
    if let Err(e) = file.sync_data() {
        tracing::warn!(error = %e, "cannot sync the capture file");
    }
    total
}

/// Waits for a copy task to reach end of stream, at most `grace` after the child exited.
pub async fn finish(task: JoinHandle<u64>, grace: Duration) -> u64 {
    let abort = task.abort_handle();
    match tokio::time::timeout(grace, task).await {
        Ok(Ok(n)) => n,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "output copy task failed");
            0
        }
        Err(_) => {
            tracing::warn!(
                "the command exited but something it started still holds its output open; \
                 stopped capturing after {}s",
                grace.as_secs()
            );
            abort.abort();
            0
        }
    }
}
