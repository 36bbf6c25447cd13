//! Credentials and server identity: the callbacks libgit2 calls while it talks to a server (SSH
//! host keys, SSH credentials), from the run's [`Session`], and libgit2's process-wide settings.
//!
//! The callbacks hand libgit2 each credential at most once
//! per kind: libgit2 asks again when a server refuses, and answering again would loop. What a
//! callback refused is remembered, so the failure is reported as what really happened (an unknown
//! host key, refused credentials) rather than libgit2's generic message.

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};

use git2::{CertificateCheckStatus, Cred, CredentialType, RemoteCallbacks};

use super::error::GitError;
use super::known_hosts::{self, HostKeyStatus};
use super::session::Session;
use crate::localize::{FetchContext, SourceProgress};

/// The host and port a URL connects to, for host-key lookups (scp-like `user@host:path` is ssh on
/// port 22).
fn host_port(url: &str) -> Option<(String, u16)> {
    if let Ok(parsed) = url::Url::parse(url) {
        if parsed.scheme() != "user" {
            let host = parsed.host_str()?.trim_matches(['[', ']']).to_string();
            return Some((host, parsed.port().unwrap_or(22)));
        }
    }
    let (userhost, _) = url.split_once(':')?;
    let host = userhost.rsplit_once('@').map_or(userhost, |(_, h)| h);
    Some((host.to_string(), 22))
}

/// Per-connection callback state: what was offered and what was refused.
#[derive(Default)]
pub struct Attempt {
    refusal: RefCell<Option<GitError>>,
    offered_password: Cell<bool>,
    offered_key: Cell<bool>,
    offered_username: Cell<u8>,
    received: Cell<u64>,
}

impl Attempt {
    /// The refusal a callback recorded, if any: it explains a failure better than libgit2 can.
    pub fn take_refusal(&self) -> Option<GitError> {
        self.refusal.borrow_mut().take()
    }

    /// The error to report for libgit2's failure `e` on this connection: what a callback refused,
    /// if one did, else `e` sorted and scrubbed of `secrets`.
    pub fn error(&self, e: &git2::Error, secrets: &[String]) -> GitError {
        self.take_refusal()
            .or_else(super::http::take_failure)
            .unwrap_or_else(|| super::error::from_git2(e, secrets))
    }

    fn refuse(&self, error: GitError, code: git2::ErrorCode) -> git2::Error {
        let message = error.to_string();
        *self.refusal.borrow_mut() = Some(error);
        git2::Error::new(code, git2::ErrorClass::Callback, message)
    }
}

/// Builds the callbacks for one connection to `url`.
pub fn callbacks<'a>(
    session: &'a Session,
    url: &'a str,
    attempt: &'a Attempt,
    progress: Option<&'a SourceProgress>,
) -> RemoteCallbacks<'a> {
    let mut cb = RemoteCallbacks::new();
    cb.credentials(move |_url, user_from_url, allowed| {
        credentials(session, attempt, user_from_url, allowed)
    });
    cb.certificate_check(move |cert, host| {
        // TLS is verified by the HTTP client (http.rs); only SSH host keys reach this callback.
        let Some(hostkey) = cert.as_hostkey() else {
            return Ok(CertificateCheckStatus::CertificatePassthrough);
        };
        let (Some(key), Some(ty)) = (hostkey.hostkey(), hostkey.hostkey_type()) else {
            return Err(attempt.refuse(
                GitError::Internal("the SSH server's host key could not be read".into()),
                git2::ErrorCode::Certificate,
            ));
        };
        let port = host_port(url).map_or(22, |(_, p)| p);
        let shown_host = if port == 22 {
            host.to_string()
        } else {
            format!("[{host}]:{port}")
        };
        let fingerprint = known_hosts::fingerprint(key);
        match known_hosts::check(&session.known_hosts, host, port, ty.name(), key) {
            HostKeyStatus::Known => Ok(CertificateCheckStatus::CertificateOk),
            HostKeyStatus::Unknown if session.allow_unknown_host_keys => {
                tracing::warn!(host = %shown_host, %fingerprint, "accepting an SSH host key that is not in known_hosts");
                Ok(CertificateCheckStatus::CertificateOk)
            }
            HostKeyStatus::Unknown => Err(attempt.refuse(
                GitError::UnknownHostKey {
                    host: shown_host,
                    fingerprint,
                },
                git2::ErrorCode::Certificate,
            )),
            HostKeyStatus::Changed | HostKeyStatus::Revoked => Err(attempt.refuse(
                GitError::ChangedHostKey {
                    host: shown_host,
                    fingerprint,
                },
                git2::ErrorCode::Certificate,
            )),
        }
    });
    if let Some(progress) = progress {
        cb.transfer_progress(move |p| {
            let now = p.received_bytes() as u64;
            progress.advance(now.saturating_sub(attempt.received.replace(now)));
            true
        });
    }
    cb
}

fn credentials(
    session: &Session,
    attempt: &Attempt,
    user_from_url: Option<&str>,
    allowed: CredentialType,
) -> Result<Cred, git2::Error> {
    let refused = |what: &str| {
        attempt.refuse(
            GitError::AuthRefused {
                detail: what.to_string(),
            },
            git2::ErrorCode::Auth,
        )
    };
    let user = session
        .username
        .as_deref()
        .or(user_from_url)
        .unwrap_or("git");
    if allowed.contains(CredentialType::USERNAME) {
        // libssh2 asks for the user name before anything else; twice means it was refused.
        let n = attempt.offered_username.get();
        attempt.offered_username.set(n + 1);
        if n < 2 {
            return Cred::username(user);
        }
        return Err(refused("the SSH server refused the user name"));
    }
    if allowed.contains(CredentialType::SSH_KEY) {
        if attempt.offered_key.replace(true) {
            return Err(refused("the SSH server refused the key"));
        }
        let key = match &session.ssh_key {
            Some(key) => key.clone(),
            None => match default_ssh_key() {
                Some(key) => key,
                None => {
                    return Err(refused(
                        "the SSH server wants a key and none was given (--ssh-key-file)",
                    ))
                }
            },
        };
        return Cred::ssh_key(user, None, &key, None).map_err(|e| {
            attempt.refuse(
                GitError::AuthRefused {
                    detail: format!("cannot use SSH key `{}`: {}", key.display(), e.message()),
                },
                git2::ErrorCode::Auth,
            )
        });
    }
    if allowed.contains(CredentialType::USER_PASS_PLAINTEXT) {
        if attempt.offered_password.replace(true) {
            return Err(refused("the server refused the user name and password"));
        }
        let Some(password) = &session.password else {
            return Err(refused(
                "the server asks for a password and none was given (--git-password-file)",
            ));
        };
        return Cred::userpass_plaintext(user, password.expose());
    }
    Err(refused(
        "the server asks for a kind of credentials Periscope does not offer",
    ))
}

fn default_ssh_key() -> Option<PathBuf> {
    let home = std::env::var_os("HOME")?;
    ["id_ed25519", "id_ecdsa", "id_rsa"]
        .iter()
        .map(|name| Path::new(&home).join(".ssh").join(name))
        .find(|p| p.is_file())
}

/// Applies the process-wide libgit2 settings a fetch needs: timeouts, and no second hash check.
///
/// libgit2 keeps these in globals. Periscope localizes sources one at a time, and every caller
/// passes the same flags, so setting them before each fetch is consistent. TLS settings
/// (`--ca-file`, `GIT_SSL_NO_VERIFY`) belong to the HTTP client of [`super::http`], which carries
/// git over http(s).
pub fn configure_libgit2(ctx: &FetchContext) -> Result<(), GitError> {
    let ms = |d: std::time::Duration| i32::try_from(d.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: libgit2 reads these integers when it opens a connection; no connection is open in
    // this process while a localize run configures them (sources are fetched one at a time).
    unsafe {
        git2::opts::set_server_connect_timeout_in_milliseconds(ms(ctx.connect_timeout))
            .map_err(|e| GitError::Internal(e.message().to_string()))?;
        git2::opts::set_server_timeout_in_milliseconds(ms(ctx.idle_timeout))
            .map_err(|e| GitError::Internal(e.message().to_string()))?;
    }
    // Every object was hashed by the indexer as it arrived, so checking the hash again on each
    // read during checkout only repeats that work (about a tenth of the checkout time).
    git2::opts::strict_hash_verification(false);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_host_and_port() {
        assert_eq!(
            host_port("ssh://git@127.0.0.1:2222/srv/r.git"),
            Some(("127.0.0.1".into(), 2222))
        );
        assert_eq!(
            host_port("git@h.test:org/r.git"),
            Some(("h.test".into(), 22))
        );
    }

    #[test]
    fn secrets_include_url_credentials() {
        let session = Session::from_ctx(&FetchContext::default(), "https://h.test/r.git").unwrap();
        let s = session.secrets("https://tok%40en:pa%2Fss@h.test/r.git");
        assert!(s.contains(&"pa/ss".to_string()), "{s:?}");
        assert!(s.contains(&"tok%40en".to_string()), "{s:?}");
    }
}
