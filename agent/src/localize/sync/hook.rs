//! What runs after each new revision is published, as git-sync's hooks do: a command (run in the
//! new revision's folder, with no arguments, `GITSYNC_HASH` and `PERISCOPE_REVISION` set to the
//! revision) and a webhook (an HTTP request carrying the revision in a `Gitsync-Hash` header).
//! Each is retried through the retry policy until it succeeds or the tries run out; a hook that
//! keeps failing is reported and the sync goes on. Nothing here prints.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::retry::{RetryPolicy, Verdict};

/// How long a hook command may run before it is killed, as git-sync's default.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// The hooks of a sync. Invariant: `webhook_method` is an HTTP method name.
#[derive(Debug, Clone, Default)]
pub struct Hooks {
    /// A program run after each new revision (git-sync's `--exechook-command`).
    pub command: Option<PathBuf>,
    /// A URL called after each new revision (git-sync's `--webhook-url`).
    pub webhook: Option<url::Url>,
    /// The webhook's method (`POST` unless told otherwise).
    pub webhook_method: String,
}

/// A hook that failed on every try.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("the hook command `{}` failed: {detail}", command.display())]
    Command { command: PathBuf, detail: String },
    #[error("the webhook failed: {detail}")]
    Webhook { detail: String },
}

impl Hooks {
    /// Whether there is anything to run.
    pub fn any(&self) -> bool {
        self.command.is_some() || self.webhook.is_some()
    }

    /// Runs the hooks for `revision`, now published at `folder`.
    pub async fn run(
        &self,
        revision: &str,
        folder: &Path,
        client: &reqwest::Client,
        retry: &RetryPolicy,
    ) -> Vec<HookError> {
        let mut failures = Vec::new();
        if let Some(command) = &self.command {
            let tried = retry
                .run(
                    |_| run_command(command, revision, folder),
                    |_| Verdict::Transient,
                    |e, n, _| tracing::warn!(attempt = n, "{e}; trying again"),
                )
                .await;
            failures.extend(tried.err());
        }
        if let Some(url) = &self.webhook {
            let tried = retry
                .run(
                    |_| call_webhook(client, &self.webhook_method, url, revision),
                    |_| Verdict::Transient,
                    |e, n, _| tracing::warn!(attempt = n, "{e}; trying again"),
                )
                .await;
            failures.extend(tried.err());
        }
        failures
    }
}

async fn run_command(command: &Path, revision: &str, folder: &Path) -> Result<(), HookError> {
    let fail = |detail: String| HookError::Command {
        command: command.to_path_buf(),
        detail,
    };
    let mut child = tokio::process::Command::new(command)
        .current_dir(folder)
        .env("GITSYNC_HASH", revision)
        .env("PERISCOPE_REVISION", revision)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| fail(format!("cannot start it: {e}")))?;
    match tokio::time::timeout(COMMAND_TIMEOUT, child.wait()).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(fail(format!("it exited with {status}"))),
        Ok(Err(e)) => Err(fail(e.to_string())),
        Err(_) => {
            let _ = child.kill().await;
            Err(fail(format!(
                "it ran longer than {}s and was killed",
                COMMAND_TIMEOUT.as_secs()
            )))
        }
    }
}

async fn call_webhook(
    client: &reqwest::Client,
    method: &str,
    url: &url::Url,
    revision: &str,
) -> Result<(), HookError> {
    let fail = |detail: String| HookError::Webhook { detail };
    let method = reqwest::Method::from_bytes(method.as_bytes())
        .map_err(|_| fail(format!("`{method}` is not an HTTP method")))?;
    let response = client
        .request(method, url.clone())
        .header("Gitsync-Hash", revision)
        .send()
        .await
        .map_err(|e| fail(crate::net::reqwest_text(&e)))?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(fail(format!(
            "the server answered HTTP {}",
            response.status().as_u16()
        )))
    }
}
