//! What can go wrong with a git source, and how a libgit2 failure is sorted into those cases.
//!
//! libgit2 reports most failures as a message with a coarse class; this module is the one place
//! that reads those messages to decide whether the user should fix a ref, a credential, a host key
//! or the network. It never lets a secret through: every detail taken from libgit2 is scrubbed of
//! the credentials in use before it is stored in an error.

use std::path::PathBuf;

use crate::error::{Classify, ErrorClass};
use crate::retry::Verdict;

/// A git failure. Invariant: no variant holds a password, token or unredacted URL.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("ref `{reference}` is neither a branch nor a tag of the repository")]
    UnknownRef { reference: String },
    #[error("the repository has no commits (its HEAD points nowhere)")]
    EmptyRepository,
    #[error("commit {sha} is not in the repository")]
    CommitMissing { sha: String },
    #[error("repository not found ({detail})")]
    RepoNotFound { detail: String },
    #[error("credentials refused ({detail})")]
    AuthRefused { detail: String },
    #[error("the SSH host key of {host} ({fingerprint}) is not in known_hosts")]
    UnknownHostKey { host: String, fingerprint: String },
    #[error("the SSH host key of {host} ({fingerprint}) differs from the one in known_hosts")]
    ChangedHostKey { host: String, fingerprint: String },
    #[error("TLS certificate not trusted ({detail})")]
    Certificate { detail: String },
    #[error("cannot reach the server ({detail})")]
    Unreachable { detail: String },
    /// The server's host name (or the proxy's) did not resolve.
    #[error("cannot resolve host `{host}`")]
    Resolve { host: String },
    #[error(transparent)]
    Proxy(#[from] crate::net::proxy::ProxyError),
    #[error("the git server failed ({detail})")]
    Remote { detail: String },
    #[error("cannot read the git password file `{}`: {error}", path.display())]
    PasswordFile {
        path: PathBuf,
        #[source]
        error: std::io::Error,
    },
    #[error("cannot use the CA file `{}`: {detail}", path.display())]
    CaFile { path: PathBuf, detail: String },
    #[error("submodule URL `{url}` is refused: {reason}")]
    SubmoduleUrl { url: String, reason: String },
    #[error("submodule name `{name}` is refused: it could lead outside .git/modules")]
    SubmoduleName { name: String },
    #[error("submodule `{path}`: {error}")]
    Submodule {
        path: String,
        #[source]
        error: Box<GitError>,
    },
    #[error("Git LFS files cannot be fetched: {reason}")]
    LfsUnsupported { reason: String },
    #[error("Git LFS object for `{path}` is missing: {detail}")]
    LfsMissing { path: String, detail: String },
    #[error("Git LFS object for `{path}` is wrong: {detail}")]
    LfsObject { path: String, detail: String },
    #[error("the commit holds a path git refuses to write ({detail})")]
    UnsafePath { detail: String },
    #[error("the checkout has {what}, over the limit of {limit}")]
    TooLarge { what: String, limit: String },
    #[error("local git operation failed: {detail}")]
    Local { detail: String },
    #[error("internal error: {0}")]
    Internal(String),
}

impl Classify for GitError {
    fn class(&self) -> ErrorClass {
        match self {
            GitError::UnknownRef { .. }
            | GitError::EmptyRepository
            | GitError::CommitMissing { .. }
            | GitError::LfsMissing { .. }
            | GitError::RepoNotFound { .. } => ErrorClass::NotFound,
            GitError::AuthRefused { .. }
            | GitError::UnknownHostKey { .. }
            | GitError::ChangedHostKey { .. }
            | GitError::Certificate { .. } => ErrorClass::Auth,
            GitError::Unreachable { .. } | GitError::Resolve { .. } | GitError::Remote { .. } => {
                ErrorClass::Network
            }
            GitError::PasswordFile { .. }
            | GitError::CaFile { .. }
            | GitError::Proxy(_)
            | GitError::LfsUnsupported { .. } => ErrorClass::Usage,
            GitError::SubmoduleUrl { .. }
            | GitError::SubmoduleName { .. }
            | GitError::LfsObject { .. }
            | GitError::UnsafePath { .. }
            | GitError::TooLarge { .. } => ErrorClass::Integrity,
            GitError::Submodule { error, .. } => error.class(),
            GitError::Local { .. } => ErrorClass::Io,
            GitError::Internal(_) => ErrorClass::Internal,
        }
    }

    fn hint(&self) -> Option<String> {
        let hint = match self {
            GitError::UnknownRef { .. } => {
                "check #ref=: it must be a branch, a tag or a full 40-digit commit SHA"
            }
            GitError::EmptyRepository => "push a commit, or name a branch with #ref=",
            GitError::CommitMissing { .. } => {
                "check that the commit was pushed; #ref= takes a full 40-digit SHA"
            }
            GitError::RepoNotFound { .. } => {
                "check the repository URL, and that these credentials may read it"
            }
            GitError::AuthRefused { .. } => {
                "check --git-username with --git-password-file (or GIT_SYNC_USERNAME/PASSWORD), \
                 or --ssh-key-file for ssh"
            }
            GitError::UnknownHostKey { .. } => {
                "add the server's host key to the file given with --known-hosts-file \
                 (e.g. from `ssh-keyscan -p PORT HOST`, checked against the fingerprint above)"
            }
            GitError::ChangedHostKey { .. } => {
                "the server is not the one known_hosts remembers: verify it before updating known_hosts"
            }
            GitError::Certificate { .. } => {
                "pass the server's CA certificate with --ca-file (GIT_SSL_NO_VERIFY=true skips the check)"
            }
            GitError::Resolve { .. } => crate::localize::http::RESOLVE_HINT,
            GitError::Proxy(_) => crate::localize::http::PROXY_HINT,
            GitError::PasswordFile { .. } => "check --git-password-file",
            GitError::CaFile { .. } => "check --ca-file: it must be a readable PEM file",
            GitError::SubmoduleUrl { .. } => {
                "the repository's .gitmodules points somewhere Periscope will not fetch from; \
                 use #submodules=none to skip submodules"
            }
            GitError::LfsUnsupported { .. } => {
                "fetch the repository over https (or name an https LFS server in its .lfsconfig), \
                 or set GIT_LFS_SKIP_SMUDGE=1 to check out the pointer files instead"
            }
            GitError::LfsMissing { .. } => {
                "push the LFS objects to the server (git lfs push --all), or set \
                 GIT_LFS_SKIP_SMUDGE=1 to check out the pointer files instead"
            }
            GitError::LfsObject { .. } => {
                "the LFS server sent bytes that are not the file the commit names; nothing was \
                 published"
            }
            GitError::SubmoduleName { .. } => {
                "the repository's .gitmodules names a submodule git refuses too (a hostile \
                 repository?); nothing was published"
            }
            GitError::UnsafePath { .. } => {
                "the repository was made to write outside its checkout or into its .git folder \
                 (git refuses it too); nothing was published"
            }
            GitError::Submodule { error, .. } => return error.hint(),
            GitError::TooLarge { .. } => "raise --max-bytes / --max-files if this is expected",
            _ => return None,
        };
        Some(hint.into())
    }
}

impl GitError {
    /// A libgit2 failure on the local repository (refs, config, index, checkout): nothing a
    /// server or a credential could change.
    pub fn local(e: git2::Error) -> GitError {
        GitError::Local {
            detail: e.message().to_string(),
        }
    }

    /// Whether another try may succeed: only failures of the network or the server.
    pub(super) fn verdict(&self) -> Verdict {
        match self {
            GitError::Unreachable { .. } | GitError::Resolve { .. } | GitError::Remote { .. } => {
                Verdict::Transient
            }
            GitError::Submodule { error, .. } => error.verdict(),
            _ => Verdict::Permanent,
        }
    }

    /// The host that did not resolve, when that is the failure (also inside a submodule).
    pub(super) fn unresolved_host(&self) -> Option<&str> {
        match self {
            GitError::Resolve { host } => Some(host),
            GitError::Submodule { error, .. } => error.unresolved_host(),
            _ => None,
        }
    }

    /// Whether this failure says the server refused *us* (credentials, identity), as opposed to
    /// refusing the request: a different request to the same server would be refused too.
    pub(super) fn is_refusal(&self) -> bool {
        matches!(self.class(), ErrorClass::Auth)
            || matches!(
                self,
                GitError::Unreachable { .. } | GitError::Resolve { .. }
            )
    }
}

/// Removes every secret in `secrets` from `text`.
pub(super) fn scrub(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    for s in secrets.iter().filter(|s| s.len() >= 3) {
        out = out.replace(s.as_str(), "***");
    }
    out
}

/// Sorts a libgit2 failure. `secrets` are scrubbed from the message.
pub(super) fn from_git2(e: &git2::Error, secrets: &[String]) -> GitError {
    use git2::{ErrorClass as C, ErrorCode as K};
    let detail = scrub(e.message(), secrets);
    let lower = detail.to_ascii_lowercase();
    let has = |needles: &[&str]| needles.iter().any(|n| lower.contains(n));
    if e.code() == K::Auth || has(&["status code: 401", "status code: 403", "authentication"]) {
        return GitError::AuthRefused { detail };
    }
    if e.code() == K::Certificate || e.class() == C::Ssl && has(&["certificate", "verify"]) {
        return GitError::Certificate { detail };
    }
    if has(&[
        "status code: 404",
        "does not appear to be a git repository",
        "not exported",
        "could not find repository",
        "repository not found",
        "no such file or directory",
    ]) {
        return GitError::RepoNotFound { detail };
    }
    // libgit2's own transports (ssh, git://): "failed to resolve address for HOST: …".
    if let Some(rest) = detail.strip_prefix("failed to resolve address for ") {
        if let Some((host, _)) = rest.split_once(':') {
            return GitError::Resolve {
                host: host.to_string(),
            };
        }
    }
    if has(&[
        "failed to connect",
        "connection refused",
        "failed to resolve",
        "timed out",
        "timeout",
        "unreachable",
        "connection reset",
        "early eof",
        "broken pipe",
    ]) {
        return GitError::Unreachable { detail };
    }
    match e.class() {
        C::Net | C::Http | C::Ssh | C::Ssl | C::Os | C::Callback => GitError::Remote { detail },
        C::Filesystem | C::Index | C::Checkout => GitError::Local { detail },
        _ if e.code() == K::NotFound => GitError::RepoNotFound { detail },
        _ => GitError::Remote { detail },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_libgit2_messages_and_scrubs_secrets() {
        let e = git2::Error::new(
            git2::ErrorCode::GenericError,
            git2::ErrorClass::Http,
            "unexpected http status code: 401 for https://bob:s3cret@h/x",
        );
        let sorted = from_git2(&e, &["s3cret".into()]);
        assert!(matches!(sorted, GitError::AuthRefused { .. }), "{sorted:?}");
        assert!(!sorted.to_string().contains("s3cret"));
        let e = git2::Error::new(
            git2::ErrorCode::GenericError,
            git2::ErrorClass::Net,
            "failed to connect to 127.0.0.1: Connection refused",
        );
        assert_eq!(from_git2(&e, &[]).class(), ErrorClass::Network);
        assert_eq!(from_git2(&e, &[]).verdict(), Verdict::Transient);
        let e = git2::Error::new(
            git2::ErrorCode::GenericError,
            git2::ErrorClass::Http,
            "unexpected http status code: 404",
        );
        assert_eq!(from_git2(&e, &[]).class(), ErrorClass::NotFound);
        let e = git2::Error::new(
            git2::ErrorCode::GenericError,
            git2::ErrorClass::Net,
            "failed to resolve address for no-such-host.test: Name or service not known",
        );
        let sorted = from_git2(&e, &[]);
        assert_eq!(
            sorted.to_string(),
            "cannot resolve host `no-such-host.test`"
        );
        assert_eq!(sorted.verdict(), Verdict::Transient);
    }
}
