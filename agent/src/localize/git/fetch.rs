//! Getting one commit's objects into a repository and checking it out: the blocking heart of a
//! git source, run on a blocking thread by the caller.
//!
//! The ref is resolved first ([`remote::ls_remote`]); then only that ref is fetched, to the asked
//! depth. A commit no advertised ref points at is asked for by SHA (servers that allow it answer
//! at the same depth); if the server refuses, the whole history is fetched and the commit looked up
//! in it. Everything is written inside the repository's folder, nowhere else.

use std::path::Path;

use git2::build::CheckoutBuilder;
use git2::{AutotagOption, FetchOptions, Oid, Repository};

use super::auth::{callbacks, Attempt, Session};
use super::error::{from_git2, GitError};
use super::remote::{self, Resolved, Target};
use crate::localize::SourceProgress;

/// The ref a fetch by SHA writes into, removed after checkout.
const WANT_REF: &str = "refs/periscope/want";

/// How one repository (the main one or a submodule) is fetched.
pub struct FetchPlan<'a> {
    pub url: &'a str,
    pub depth: u32,
    pub session: &'a Session,
    pub progress: &'a SourceProgress,
}

impl FetchPlan<'_> {
    /// Resolves `reference` on the server, fetches it into `repo` and checks it out. Returns the
    /// ref with the commit actually checked out.
    pub fn run(&self, repo: &Repository, reference: Option<&str>) -> Result<Resolved, GitError> {
        let resolved = remote::ls_remote(self.url, reference, self.session)?;
        tracing::debug!(commit = %resolved.commit, target = ?resolved.target, "resolved ref");
        let commit = self.fetch(repo, &resolved)?;
        tracing::debug!(%commit, "fetched");
        checkout(repo, commit, &resolved.target)?;
        tracing::debug!(%commit, "checked out");
        Ok(Resolved { commit, ..resolved })
    }

    fn fetch(&self, repo: &Repository, resolved: &Resolved) -> Result<Oid, GitError> {
        let local = match &resolved.target {
            Target::Branch(b) => format!("refs/remotes/origin/{b}"),
            Target::Tag(t) => format!("refs/tags/{t}"),
            Target::Commit => WANT_REF.to_string(),
        };
        let direct = match &resolved.source_ref {
            Some(src) => format!("+{src}:{local}"),
            None => format!("+{}:{local}", resolved.commit),
        };
        match self.fetch_refspecs(repo, &[direct.as_str()], self.depth) {
            Ok(()) => {}
            Err(e) if resolved.source_ref.is_none() && !e.is_refusal() => {
                // The server would not send an unadvertised commit: fetch everything it has.
                tracing::info!(commit = %resolved.commit, error = %e,
                    "the server refused a fetch by SHA; fetching the full history instead");
                self.fetch_refspecs(
                    repo,
                    &[
                        "+refs/heads/*:refs/remotes/origin/*",
                        "+refs/tags/*:refs/tags/*",
                    ],
                    0,
                )?;
            }
            Err(e) => return Err(e),
        }
        let commit = match &resolved.target {
            // The branch may have moved since ls-remote: check out what was actually fetched.
            Target::Branch(_) | Target::Tag(_) => repo
                .find_reference(&local)
                .and_then(|r| r.peel_to_commit())
                .map(|c| c.id())
                .map_err(|e| from_git2(&e, &[]))?,
            Target::Commit => resolved.commit,
        };
        if repo.find_commit(commit).is_err() {
            return Err(GitError::CommitMissing {
                sha: commit.to_string(),
            });
        }
        Ok(commit)
    }

    fn fetch_refspecs(
        &self,
        repo: &Repository,
        refspecs: &[&str],
        depth: u32,
    ) -> Result<(), GitError> {
        // libgit2's local transport cannot fetch shallow; local history costs no network anyway.
        let depth = if is_local(self.url) { 0 } else { depth };
        let secrets = self.session.secrets(self.url);
        let attempt = Attempt::default();
        let fail = |e: git2::Error| {
            attempt
                .take_refusal()
                .unwrap_or_else(|| from_git2(&e, &secrets))
        };
        let mut remote = repo.remote_anonymous(self.url).map_err(fail)?;
        let mut options = FetchOptions::new();
        options
            .remote_callbacks(callbacks(
                self.session,
                self.url,
                &attempt,
                Some(self.progress),
            ))
            .download_tags(AutotagOption::None)
            .update_fetchhead(false)
            .depth(i32::try_from(depth).unwrap_or(i32::MAX));
        remote
            .fetch(refspecs, Some(&mut options), None)
            .map_err(fail)
    }
}

/// Whether `url` names a repository on this machine (libgit2's local transport).
pub fn is_local(url: &str) -> bool {
    url.starts_with("file:") || url.starts_with('/') || url.starts_with('.')
}

/// Points HEAD at `commit` (as a local branch for branches, detached otherwise) and writes the
/// working tree.
fn checkout(repo: &Repository, commit: Oid, target: &Target) -> Result<(), GitError> {
    let local = |e: git2::Error| GitError::Local {
        detail: e.message().to_string(),
    };
    let object = repo.find_commit(commit).map_err(local)?;
    match target {
        Target::Branch(name) => {
            repo.branch(name, &object, true).map_err(local)?;
            repo.set_head(&format!("refs/heads/{name}"))
                .map_err(local)?;
        }
        _ => repo.set_head_detached(commit).map_err(local)?,
    }
    let mut builder = CheckoutBuilder::new();
    builder.force();
    if !needs_filters(repo, &object).map_err(local)? {
        // Loading attributes for every file costs libgit2 a realpath() per path and doubles the
        // checkout time of a 10k-file tree; with no attributes and no autocrlf they change nothing.
        builder.disable_filters(true);
    }
    repo.checkout_head(Some(&mut builder)).map_err(local)?;
    if let Ok(mut want) = repo.find_reference(WANT_REF) {
        want.delete().map_err(local)?;
    }
    Ok(())
}

/// Whether checking out `commit` could transform any file: only `.gitattributes` (in the tree or
/// named by `core.attributesFile`) or `core.autocrlf` make libgit2's filters do anything.
fn needs_filters(repo: &Repository, commit: &git2::Commit<'_>) -> Result<bool, git2::Error> {
    let config = repo.config()?;
    let autocrlf = config
        .get_string("core.autocrlf")
        .unwrap_or_default()
        .to_ascii_lowercase();
    if matches!(autocrlf.as_str(), "true" | "input" | "yes" | "on" | "1")
        || config.get_path("core.attributesFile").is_ok()
    {
        return Ok(true);
    }
    let mut found = false;
    let walked = commit
        .tree()?
        .walk(git2::TreeWalkMode::PreOrder, |_, entry| {
            if entry.name_bytes() == b".gitattributes" {
                found = true;
                git2::TreeWalkResult::Abort
            } else {
                git2::TreeWalkResult::Ok
            }
        });
    match walked {
        // Stopping the walk at the first match is reported as an error.
        Err(_) if found => Ok(true),
        Err(e) => Err(e),
        Ok(()) => Ok(false),
    }
}

/// Records `origin` (credentials removed) and the branch's upstream, so `git log`, `git status`
/// and `git fetch` work in the checkout as in a clone.
pub fn add_origin(repo: &Repository, stored_url: &str, target: &Target) -> Result<(), GitError> {
    let local = |e: git2::Error| GitError::Local {
        detail: e.message().to_string(),
    };
    repo.remote("origin", stored_url).map_err(local)?;
    if let Target::Branch(name) = target {
        let mut branch = repo
            .find_branch(name, git2::BranchType::Local)
            .map_err(local)?;
        branch
            .set_upstream(Some(&format!("origin/{name}")))
            .map_err(local)?;
    }
    Ok(())
}

/// The URL written into `.git/config`: without a password, and for http(s) without a user name
/// either (often a token), so the checkout holds no credentials.
pub fn stored_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if url.contains("://") => {
            let _ = parsed.set_password(None);
            if parsed.scheme().contains("http") {
                let _ = parsed.set_username("");
            }
            parsed.to_string()
        }
        _ => match url.split_once('@') {
            // scp-like `user:pass@host:path`: keep the user, drop the password.
            Some((user, rest)) if user.contains(':') => {
                format!("{}@{rest}", user.split(':').next().unwrap_or_default())
            }
            _ => url.to_string(),
        },
    }
}

/// Opens a fresh repository in `dir` (which must be empty).
pub fn init(dir: &Path) -> Result<Repository, GitError> {
    Repository::init(dir).map_err(|e| GitError::Local {
        detail: e.message().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_url_holds_no_credentials() {
        assert_eq!(
            stored_url("https://bob:pw@h.test/r.git"),
            "https://h.test/r.git"
        );
        assert_eq!(
            stored_url("ssh://git:pw@h.test:2222/r.git"),
            "ssh://git@h.test:2222/r.git"
        );
        assert_eq!(stored_url("git@h.test:o/r.git"), "git@h.test:o/r.git");
        assert_eq!(stored_url("u:pw@h.test:o/r.git"), "u@h.test:o/r.git");
        assert_eq!(stored_url("file:///srv/r"), "file:///srv/r");
    }
}
