//! Getting one commit's objects into a repository and checking it out: the blocking heart of a
//! git source, run on a blocking thread by the caller.
//!
//! The ref is resolved from the refs the server advertises when the connection opens; then, on
//! the same connection, only that ref is fetched, to the asked depth. A commit no advertised ref
//! points at is asked for by SHA (servers that allow it answer at the same depth); if the server
//! refuses, the whole history is fetched and the commit looked up in it. Git LFS files are then
//! fetched in place of their pointers. Everything is written inside the repository's folder,
//! nowhere else.

use std::path::Path;

use git2::{AutotagOption, Direction, FetchOptions, Oid, Remote, Repository};

use super::auth::{callbacks, Attempt};
use super::checkout::{checkout, WANT_REF};
use super::error::{from_git2, GitError};
use super::lfs;
use super::remote::{is_local, Advertised, Resolved, Target};
use super::session::Session;
use crate::localize::SourceProgress;

/// How one repository (the main one or a submodule) is fetched.
pub struct FetchPlan<'a> {
    pub url: &'a str,
    pub depth: u32,
    pub session: &'a Session,
    pub progress: &'a SourceProgress,
    /// What Git LFS objects may add up to (`--max-bytes`).
    pub max_bytes: u64,
}

impl FetchPlan<'_> {
    /// Resolves `reference` on the server, fetches it into `repo` and checks it out. Returns the
    /// ref with the commit actually checked out.
    pub fn run(&self, repo: &Repository, reference: Option<&str>) -> Result<Resolved, GitError> {
        let secrets = self.session.secrets(self.url);
        let listing = Attempt::default();
        let fail = |e: git2::Error| listing.error(&e, &secrets);
        let mut remote = repo.remote_anonymous(self.url).map_err(fail)?;
        // One connection for the ref list and the pack, as `git clone` does: a second one would
        // cost the server another upload-pack and the client another round trip.
        let mut connection = remote
            .connect_auth(
                Direction::Fetch,
                Some(callbacks(self.session, self.url, &listing, None)),
                None,
            )
            .map_err(fail)?;
        let resolved = Advertised::list(&connection)
            .map_err(fail)?
            .resolve(reference)?;
        tracing::debug!(commit = %resolved.commit, target = ?resolved.target, "resolved ref");
        let commit = self.fetch(repo, connection.remote(), &resolved)?;
        drop(connection);
        tracing::debug!(%commit, "fetched");
        checkout(repo, commit, &resolved.target)?;
        tracing::debug!(%commit, "checked out");
        lfs::smudge(repo, self.url, self.session, self.progress, self.max_bytes)?;
        Ok(Resolved { commit, ..resolved })
    }

    fn fetch(
        &self,
        repo: &Repository,
        remote: &mut Remote<'_>,
        resolved: &Resolved,
    ) -> Result<Oid, GitError> {
        let local = match &resolved.target {
            Target::Branch(b) => format!("refs/remotes/origin/{b}"),
            Target::Tag(t) => format!("refs/tags/{t}"),
            Target::Commit => WANT_REF.to_string(),
        };
        let direct = match &resolved.source_ref {
            Some(src) => format!("+{src}:{local}"),
            None => format!("+{}:{local}", resolved.commit),
        };
        match self.fetch_refspecs(remote, &[direct.as_str()], self.depth) {
            Ok(()) => {}
            Err(e) if resolved.source_ref.is_none() && !e.is_refusal() => {
                // The server would not send an unadvertised commit: fetch everything it has (on a
                // new connection: a fetch always ends its own).
                tracing::info!(commit = %resolved.commit, error = %e,
                    "the server refused a fetch by SHA; fetching the full history instead");
                self.fetch_refspecs(
                    remote,
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
            // What was fetched, which is what the connection advertised.
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

    /// Fetches `refspecs` through `remote`, on its open connection if it has one.
    fn fetch_refspecs(
        &self,
        remote: &mut Remote<'_>,
        refspecs: &[&str],
        depth: u32,
    ) -> Result<(), GitError> {
        // libgit2's local transport cannot fetch shallow; local history costs no network anyway.
        let depth = if is_local(self.url) { 0 } else { depth };
        let secrets = self.session.secrets(self.url);
        // Its own record of what was offered: a stateless (HTTP) fetch may ask for credentials
        // again, and answering must not look like a loop.
        let attempt = Attempt::default();
        let fail = |e: git2::Error| attempt.error(&e, &secrets);
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

/// Records `origin` (credentials removed) and the branch's upstream, so `git log`, `git status`
/// and `git fetch` work in the checkout as in a clone.
pub fn add_origin(repo: &Repository, stored_url: &str, target: &Target) -> Result<(), GitError> {
    let local = GitError::local;
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
    Repository::init(dir).map_err(GitError::local)
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
