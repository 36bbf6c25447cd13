//! Git sources: resolve a ref, fetch just that commit (shallow by default), check it out with its
//! submodules, and keep `.git` so people can `git log` in the checkout.
//!
//! * [`remote`] asks the server which commit a ref names (`ls-remote`): the cheap fingerprint.
//! * [`fetch`] gets the commit's objects on the connection that listed the refs; [`checkout`]
//!   writes its tree, on several threads; [`submodule`] does the same for every submodule,
//!   recursively.
//! * [`http`] carries git's smart HTTP protocol for libgit2 through reqwest (replies that end when
//!   the server closes, the shared TLS settings, credentials only for the source's own server).
//! * [`lfs`] fetches the Git LFS files of each checkout in place of their pointer files.
//! * [`auth`] answers libgit2's questions: credentials, SSH host keys ([`known_hosts`]), TLS.
//! * [`error`] sorts libgit2's failures into what the user must fix.
//!
//! libgit2 blocks, so every network step runs on a blocking thread, and every step that can fail
//! for network reasons is retried through the [`RetryPolicy`](crate::retry::RetryPolicy). This
//! module writes only inside the staging folder it is given, and never into any error or log a
//! credential or a URL that was not redacted. libgit2 is only ever given URLs without a password
//! (nor, over http(s), a user name), so nothing it writes under `.git` can hold one.

mod auth;
mod checkout;
mod error;
mod fetch;
mod http;
pub mod known_hosts;
mod lfs;
mod remote;
mod session;
mod submodule;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use error::GitError;

use super::{
    FetchContext, Fetched, Revision, RevisionKind, SourceError, SourceOptions, SourceProgress,
    Submodules,
};
use crate::redact::redact_url;
use fetch::FetchPlan;
use session::Session;

/// The commit the source's ref points at now, without fetching objects. A full SHA names itself,
/// so no server is asked.
pub async fn probe(
    url: &str,
    opts: &SourceOptions,
    ctx: &FetchContext,
) -> Result<Option<String>, SourceError> {
    if let Some(sha) = opts.reference.as_deref().and_then(remote::full_sha) {
        return Ok(Some(sha.to_string()));
    }
    auth::configure_libgit2(ctx)?;
    let session = Arc::new(Session::from_ctx(ctx, url)?);
    let owned = fetch::stored_url(url);
    let reference = opts.reference.clone();
    let resolved = retrying(ctx, url, move || {
        let _scope = http::Scope::enter(&session)?;
        remote::ls_remote(&owned, reference.as_deref(), &session)
    })
    .await?;
    Ok(Some(resolved.commit.to_string()))
}

/// Clones the source into `stage` and checks out the ref.
pub async fn fetch(
    url: &str,
    opts: &SourceOptions,
    stage: &Path,
    ctx: &FetchContext,
    progress: &SourceProgress,
) -> Result<Fetched, SourceError> {
    auth::configure_libgit2(ctx)?;
    let job = Arc::new(Job {
        session: Session::from_ctx(ctx, url)?,
        url: fetch::stored_url(url),
        reference: opts.reference.clone(),
        depth: opts.depth.unwrap_or(1),
        submodules: opts.submodules,
        stage: stage.to_path_buf(),
        progress: progress.clone(),
        max_bytes: ctx.limits.max_bytes,
    });
    let commit = {
        let job = job.clone();
        retrying(ctx, url, move || job.attempt()).await?
    };
    let limits = ctx.limits;
    let stage = stage.to_path_buf();
    let (bytes, files) = tokio::task::spawn_blocking(move || count_checkout(&stage))
        .await
        .map_err(|e| GitError::Internal(e.to_string()))??;
    if bytes > limits.max_bytes {
        return Err(GitError::TooLarge {
            what: format!("{bytes} bytes"),
            limit: format!("{} bytes (--max-bytes)", limits.max_bytes),
        }
        .into());
    }
    if files > limits.max_files {
        return Err(GitError::TooLarge {
            what: format!("{files} files and folders"),
            limit: format!("{} (--max-files)", limits.max_files),
        }
        .into());
    }
    Ok(Fetched {
        revision: Revision {
            kind: RevisionKind::Commit,
            id: commit.clone(),
        },
        fingerprint: Some(commit),
        bytes,
        files,
    })
}

/// One git source to fetch. Invariant: `stage` is the source's own staging folder; `url` holds no
/// password (and over http(s) no user name): credentials live in `session` only, so libgit2 never
/// writes them into `.git` (config, reflogs).
struct Job {
    session: Session,
    url: String,
    reference: Option<String>,
    depth: u32,
    submodules: Submodules,
    stage: PathBuf,
    progress: SourceProgress,
    max_bytes: u64,
}

impl Job {
    /// One try from an empty stage: resolve, fetch, check out, submodules. Returns the commit SHA.
    fn attempt(&self) -> Result<String, GitError> {
        let _scope = http::Scope::enter(&self.session)?;
        empty_dir(&self.stage)?;
        let repo = fetch::init(&self.stage)?;
        let plan = FetchPlan {
            url: &self.url,
            depth: self.depth,
            session: &self.session,
            progress: &self.progress,
            max_bytes: self.max_bytes,
        };
        let resolved = plan.run(&repo, self.reference.as_deref())?;
        fetch::add_origin(&repo, &self.url, &resolved.target)?;
        if self.submodules == Submodules::Recursive {
            submodule::update_all(&repo, &plan, 0)?;
        }
        Ok(resolved.commit.to_string())
    }
}

/// Runs a blocking git step on a blocking thread, retrying network failures through the policy.
async fn retrying<T: Send + 'static>(
    ctx: &FetchContext,
    url: &str,
    step: impl Fn() -> Result<T, GitError> + Send + Sync + 'static,
) -> Result<T, GitError> {
    let step = Arc::new(step);
    let shown = redact_url(url);
    let attempts = ctx.retry.attempts;
    ctx.retry
        .run(
            |_| {
                let step = step.clone();
                async move {
                    tokio::task::spawn_blocking(move || step())
                        .await
                        .map_err(|e| GitError::Internal(e.to_string()))?
                }
            },
            GitError::verdict,
            |e, attempt, wait| match e.unresolved_host() {
                Some(host) => crate::net::warn_unresolved(host, attempt, attempts, Some(wait)),
                None => tracing::warn!(source = %shown, attempt, wait_ms = wait.as_millis() as u64,
                    error = %e, "git fetch failed; retrying"),
            },
        )
        .await
}

/// Removes everything inside `dir`, keeping `dir` itself (a retry starts from nothing).
fn empty_dir(dir: &Path) -> Result<(), GitError> {
    let io = |e: std::io::Error| GitError::Local {
        detail: format!("cannot clear `{}`: {e}", dir.display()),
    };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.is_dir() && !path.is_symlink() {
            std::fs::remove_dir_all(&path).map_err(io)?;
        } else {
            std::fs::remove_file(&path).map_err(io)?;
        }
    }
    Ok(())
}

/// Bytes of regular files and the number of entries in the checkout, `.git` excluded.
fn count_checkout(dir: &Path) -> Result<(u64, u64), GitError> {
    let mut bytes = 0;
    let mut files = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        let io = |e: std::io::Error| GitError::Local {
            detail: format!("cannot read `{}`: {e}", folder.display()),
        };
        for entry in std::fs::read_dir(&folder).map_err(io)? {
            let entry = entry.map_err(io)?;
            if entry.file_name() == ".git" {
                continue;
            }
            let kind = entry.file_type().map_err(io)?;
            files += 1;
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file() {
                bytes += entry.metadata().map_err(io)?.len();
            }
        }
    }
    Ok((bytes, files))
}
