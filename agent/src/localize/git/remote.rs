//! Asking a server which commit a ref names (`git ls-remote`), without fetching objects.
//!
//! This is both the cheap fingerprint the orchestrator compares before deciding to fetch
//! ([`ls_remote`]), and the first step of a fetch, on the fetch's own connection
//! ([`Advertised`]): knowing whether the ref is a branch, a tag or a bare commit decides what to ask
//! for and how the checkout's HEAD looks. This module only reads the server's ref list.

use git2::{Direction, Oid, Remote, RemoteConnection};

use super::auth::{callbacks, Attempt};
use super::error::GitError;
use super::session::Session;

/// What the user asked for, as found on the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A branch (`refs/heads/NAME`), checked out as that local branch.
    Branch(String),
    /// A tag (`refs/tags/NAME`), checked out detached.
    Tag(String),
    /// A commit named by its SHA (or a HEAD that is not a branch), checked out detached.
    Commit,
}

/// A ref resolved on the server. Invariant: `commit` is what the ref pointed at (tags peeled to
/// their commit when the server advertised the peeled value).
#[derive(Debug, Clone)]
pub struct Resolved {
    pub target: Target,
    pub commit: Oid,
    /// The advertised ref to fetch to get `commit`; `None` when no ref points at it, and the commit
    /// must be asked for by SHA.
    pub source_ref: Option<String>,
}

/// A full 40-digit hexadecimal commit SHA, lower-cased.
pub fn full_sha(reference: &str) -> Option<Oid> {
    (reference.len() == 40 && reference.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| Oid::from_str(reference).ok())
        .flatten()
}

/// Lists the server's refs and resolves `reference` (`None` = the server's HEAD).
pub fn ls_remote(
    url: &str,
    reference: Option<&str>,
    session: &Session,
) -> Result<Resolved, GitError> {
    let secrets = session.secrets(url);
    let attempt = Attempt::default();
    let fail = |e: git2::Error| attempt.error(&e, &secrets);
    let mut remote = Remote::create_detached(url).map_err(fail)?;
    let connection = remote
        .connect_auth(
            Direction::Fetch,
            Some(callbacks(session, url, &attempt, None)),
            None,
        )
        .map_err(fail)?;
    let advertised = Advertised::list(&connection).map_err(fail)?;
    drop(connection);
    advertised.resolve(reference)
}

/// What a server said when a connection opened. Invariant: `heads` is in the server's order.
pub struct Advertised {
    heads: Vec<(String, Oid)>,
    /// The branch the server's HEAD names, when it says.
    default_branch: Option<String>,
}

impl Advertised {
    /// The refs an open connection advertised.
    pub fn list(connection: &RemoteConnection<'_, '_, '_>) -> Result<Advertised, git2::Error> {
        let heads = connection
            .list()?
            .iter()
            .map(|h| (h.name().to_string(), h.oid()))
            .collect();
        let default_branch = connection
            .default_branch()
            .ok()
            .and_then(|b| b.as_str().ok().map(str::to_string));
        Ok(Advertised {
            heads,
            default_branch,
        })
    }

    /// Resolves `reference` (`None` = the server's HEAD) against these refs.
    pub fn resolve(&self, reference: Option<&str>) -> Result<Resolved, GitError> {
        resolve(&self.heads, self.default_branch.as_deref(), reference)
    }
}

/// Resolves `reference` against an advertised ref list.
fn resolve(
    heads: &[(String, Oid)],
    default_branch: Option<&str>,
    reference: Option<&str>,
) -> Result<Resolved, GitError> {
    let find = |name: &str| heads.iter().find(|(n, _)| n == name).map(|(_, o)| *o);
    let branch = |name: &str| {
        find(&format!("refs/heads/{name}")).map(|commit| Resolved {
            target: Target::Branch(name.to_string()),
            commit,
            source_ref: Some(format!("refs/heads/{name}")),
        })
    };
    let tag = |name: &str| {
        let full = format!("refs/tags/{name}");
        find(&full).map(|oid| Resolved {
            target: Target::Tag(name.to_string()),
            // An annotated tag is advertised twice: the tag object, then `^{}` with its commit.
            commit: find(&format!("{full}^{{}}")).unwrap_or(oid),
            source_ref: Some(full),
        })
    };
    let Some(reference) = reference else {
        if let Some(resolved) = default_branch
            .and_then(|b| b.strip_prefix("refs/heads/"))
            .and_then(branch)
        {
            return Ok(resolved);
        }
        // A detached HEAD on the server, or a server that does not say what HEAD names.
        return match find("HEAD") {
            Some(commit) => Ok(heads
                .iter()
                .filter_map(|(n, _)| n.strip_prefix("refs/heads/"))
                .find_map(|b| branch(b).filter(|r| r.commit == commit))
                .unwrap_or(Resolved {
                    target: Target::Commit,
                    commit,
                    source_ref: Some("HEAD".into()),
                })),
            None => Err(GitError::EmptyRepository),
        };
    };
    if let Some(commit) = full_sha(reference) {
        // Fetching a ref that points at the commit works on every server; asking for a bare SHA
        // only where the server allows it.
        let source_ref = heads
            .iter()
            .find(|(n, o)| *o == commit && n != "HEAD")
            .map(|(n, _)| n.trim_end_matches("^{}").to_string());
        return Ok(Resolved {
            target: Target::Commit,
            commit,
            source_ref,
        });
    }
    let found = if let Some(name) = reference.strip_prefix("refs/heads/") {
        branch(name)
    } else if let Some(name) = reference.strip_prefix("refs/tags/") {
        tag(name)
    } else {
        // Like `git clone --branch`: a branch wins over a tag of the same name.
        branch(reference).or_else(|| tag(reference))
    };
    found.ok_or_else(|| GitError::UnknownRef {
        reference: reference.to_string(),
    })
}

/// Whether `url` names a repository on this machine (libgit2's local transport).
pub fn is_local(url: &str) -> bool {
    url.starts_with("file:") || url.starts_with('/') || url.starts_with('.')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oid(n: u8) -> Oid {
        Oid::from_bytes(&[n; 20]).unwrap()
    }

    #[test]
    fn resolves_branches_tags_shas_and_head() {
        let heads = vec![
            ("HEAD".to_string(), oid(1)),
            ("refs/heads/main".to_string(), oid(1)),
            ("refs/heads/dev".to_string(), oid(2)),
            ("refs/tags/v1".to_string(), oid(3)),
            ("refs/tags/v1^{}".to_string(), oid(4)),
            ("refs/tags/light".to_string(), oid(2)),
        ];
        let r = resolve(&heads, Some("refs/heads/main"), None).unwrap();
        assert_eq!(
            (r.target, r.commit),
            (Target::Branch("main".into()), oid(1))
        );
        let r = resolve(&heads, None, None).unwrap();
        assert_eq!(r.target, Target::Branch("main".into()));
        let r = resolve(&heads, None, Some("dev")).unwrap();
        assert_eq!((r.target, r.commit), (Target::Branch("dev".into()), oid(2)));
        let r = resolve(&heads, None, Some("v1")).unwrap();
        assert_eq!((r.target, r.commit), (Target::Tag("v1".into()), oid(4)));
        let r = resolve(&heads, None, Some(&oid(4).to_string())).unwrap();
        assert_eq!(r.source_ref.as_deref(), Some("refs/tags/v1"));
        let r = resolve(&heads, None, Some(&oid(9).to_string())).unwrap();
        assert_eq!(
            (r.target, r.commit, r.source_ref),
            (Target::Commit, oid(9), None)
        );
        assert!(matches!(
            resolve(&heads, None, Some("nope")),
            Err(GitError::UnknownRef { .. })
        ));
        assert!(matches!(
            resolve(&[], None, None),
            Err(GitError::EmptyRepository)
        ));
    }
}
