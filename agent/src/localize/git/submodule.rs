//! Submodules, recursively: each one is fetched at exactly the commit its parent records, laid out
//! as `git submodule update --init --recursive` does (its repository under the parent's
//! `.git/modules/`, a `.git` file in its folder).
//!
//! A repository chooses its submodules' URLs, so they are checked first: a submodule may not reach
//! into the local filesystem unless the parent itself came from there (the rule git adopted for
//! CVE-2022-39253), and nesting is bounded.

use git2::Repository;

use super::auth::Session;
use super::error::GitError;
use super::fetch::{is_local, FetchPlan};
use crate::localize::SourceProgress;

/// How deep submodules may nest: deeper trees are almost surely a loop.
const MAX_NESTING: usize = 16;

/// Fetches and checks out every submodule of `repo`, and theirs. `parent_url` is where `repo` came
/// from.
pub fn update_all(
    repo: &Repository,
    parent_url: &str,
    depth: u32,
    session: &Session,
    progress: &SourceProgress,
    level: usize,
) -> Result<(), GitError> {
    let local = GitError::local;
    for mut sub in repo.submodules().map_err(local)? {
        let path = sub.path().display().to_string();
        let wrap = |error: GitError| GitError::Submodule {
            path: path.clone(),
            error: Box::new(error),
        };
        if level >= MAX_NESTING {
            return Err(wrap(GitError::SubmoduleUrl {
                url: sub.url().ok().flatten().unwrap_or_default().to_string(),
                reason: format!("submodules nest more than {MAX_NESTING} levels deep"),
            }));
        }
        // The commit the parent's tree records; a submodule declared but not committed is skipped,
        // as git does.
        let Some(commit) = sub.head_id() else {
            tracing::warn!(submodule = %path, "declared in .gitmodules but not in the tree; skipped");
            continue;
        };
        sub.init(false).map_err(local).map_err(wrap)?;
        let subrepo = sub.repo_init(true).map_err(local).map_err(wrap)?;
        // `repo_init` resolved a relative URL against the parent's origin.
        let url = subrepo
            .find_remote("origin")
            .ok()
            .and_then(|r| r.url().ok().map(str::to_string))
            .ok_or_else(|| {
                wrap(GitError::SubmoduleUrl {
                    url: String::new(),
                    reason: "it has no usable URL".into(),
                })
            })?;
        check_url(&url, parent_url).map_err(wrap)?;
        tracing::info!(submodule = %path, url = %crate::redact::redact_url(&url), %commit, "fetching submodule");
        let plan = FetchPlan {
            url: &url,
            depth,
            session,
            progress,
        };
        plan.run(&subrepo, Some(&commit.to_string()))
            .map_err(wrap)?;
        update_all(&subrepo, &url, depth, session, progress, level + 1).map_err(wrap)?;
    }
    Ok(())
}

/// Refuses submodule URLs that reach the local filesystem from a remote parent, and transports
/// Periscope does not speak.
fn check_url(url: &str, parent_url: &str) -> Result<(), GitError> {
    let refuse = |reason: &str| {
        Err(GitError::SubmoduleUrl {
            url: crate::redact::redact_url(url),
            reason: reason.into(),
        })
    };
    if url.starts_with('-') || url.contains("::") {
        return refuse("it could be read as an option or a transport helper");
    }
    if is_local(url) && !is_local(parent_url) {
        return refuse(
            "a repository fetched from a server may not reach into the local filesystem",
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_local_urls_from_remote_parents() {
        assert!(check_url("file:///etc/repo", "https://h.test/r.git").is_err());
        assert!(check_url("/srv/other", "git://h.test/r").is_err());
        assert!(check_url("ext::sh -c evil", "git://h.test/r").is_err());
        assert!(check_url("file:///srv/sub", "file:///srv/super").is_ok());
        assert!(check_url("git://h.test/sub", "git://h.test/r").is_ok());
    }
}
