//! Who a git fetch is, resolved once: the credentials (from flags, a password file or the source
//! URL) and where they may be sent, the known_hosts files of ssh, and the HTTP client git over
//! HTTP(S) and Git LFS use.

use std::path::{Path, PathBuf};

use super::error::GitError;
use crate::localize::FetchContext;
use crate::net::reqwest_text as chain;
use crate::redact::Secret;

/// Everything the callbacks and the HTTP transport need, resolved from flags, files and the
/// source URL. Invariant: `password` came from `--git-password-file` when one was given, else from
/// the flags, else from the source URL; `origin` is the source URL's, the one place HTTP
/// credentials are sent.
#[derive(Debug, Clone)]
pub struct Session {
    pub(super) username: Option<String>,
    pub(super) password: Option<Secret>,
    origin: Option<url::Origin>,
    http: reqwest::Client,
    pub(super) ssh_key: Option<PathBuf>,
    pub(super) known_hosts: Vec<PathBuf>,
    pub(super) allow_unknown_host_keys: bool,
}

impl Session {
    /// Reads the password file, if any, and settles which known_hosts files apply. `url` is the
    /// source's URL, credentials included: a user name and password in it are used when no flag
    /// gives them.
    pub fn from_ctx(ctx: &FetchContext, url: &str) -> Result<Session, GitError> {
        let auth = &ctx.git;
        let password = match &auth.password_file {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|error| GitError::PasswordFile {
                        path: path.clone(),
                        error,
                    })?;
                // A Secret file written by `echo` ends with a newline that is not part of it.
                Some(Secret::new(text.trim_end_matches(['\n', '\r'])))
            }
            None => auth.password.clone(),
        };
        let parsed = url::Url::parse(url).ok().filter(|_| url.contains("://"));
        let from_url = |part: &str| (!part.is_empty()).then(|| percent_decode(part));
        let password = password.or_else(|| {
            parsed
                .as_ref()
                .and_then(|u| u.password())
                .and_then(from_url)
                .map(Secret::new)
        });
        let username = auth
            .username
            .clone()
            .or_else(|| parsed.as_ref().and_then(|u| from_url(u.username())));
        let known_hosts = match &auth.known_hosts_file {
            Some(file) => vec![file.clone()],
            None => {
                // Like ssh: the user's file, then the system's.
                let mut files = Vec::new();
                if let Some(home) = std::env::var_os("HOME") {
                    files.push(Path::new(&home).join(".ssh/known_hosts"));
                }
                files.push(PathBuf::from("/etc/ssh/ssh_known_hosts"));
                files
            }
        };
        Ok(Session {
            username,
            password,
            origin: parsed.map(|u| u.origin()),
            http: client(ctx)?,
            ssh_key: auth.ssh_key_file.clone(),
            known_hosts,
            allow_unknown_host_keys: auth.allow_unknown_host_keys,
        })
    }

    /// The user name and password to send with an HTTP request to `url`: only to the source's own
    /// origin (a submodule on the same server gets them; another server never does), and only
    /// when there is a password.
    pub fn http_credentials(&self, url: &url::Url) -> Option<(String, Secret)> {
        if self.origin.as_ref() != Some(&url.origin()) {
            return None;
        }
        let password = self.password.clone()?;
        Some((self.username.clone().unwrap_or_default(), password))
    }

    /// The HTTP client for git over http(s) and Git LFS.
    pub fn http_client(&self) -> &reqwest::Client {
        &self.http
    }

    /// The strings that must never appear in an error: the password and any URL credentials.
    pub fn secrets(&self, url: &str) -> Vec<String> {
        let mut secrets: Vec<String> = self
            .password
            .iter()
            .map(|p| p.expose().to_string())
            .collect();
        if let Ok(parsed) = url::Url::parse(url) {
            if let Some(p) = parsed.password() {
                secrets.push(p.to_string());
                secrets.push(percent_decode(p));
            }
            if parsed.scheme().contains("http") && !parsed.username().is_empty() {
                // A bare user name in an https URL is usually a token.
                secrets.push(parsed.username().to_string());
            }
        }
        secrets
    }
}

/// A URL's user-info part, percent-decoded (`+` stays a plus sign there).
fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// The HTTP client git uses for a localize run: the same TLS roots, `--ca-file`,
/// `GIT_SSL_NO_VERIFY`, timeouts and proxy rule as archive downloads.
pub(super) fn client(ctx: &crate::localize::FetchContext) -> Result<reqwest::Client, GitError> {
    crate::net::tls::ensure_provider();
    let mut builder = reqwest::Client::builder()
        .connect_timeout(ctx.connect_timeout)
        .read_timeout(ctx.idle_timeout)
        // Smart HTTP servers (and the hosting services in front of them) expect a git agent.
        .user_agent(concat!(
            "git/2.0 (periscope/",
            env!("CARGO_PKG_VERSION"),
            ")"
        ));
    if let Some(path) = &ctx.tls.ca_file {
        let certs = crate::net::ca::certs(path).map_err(|detail| GitError::CaFile {
            path: path.clone(),
            detail,
        })?;
        builder = builder.tls_certs_merge(certs);
    }
    if ctx.tls.insecure {
        builder = builder.danger_accept_invalid_certs(true);
    }
    crate::net::proxy::Proxies::from_env()?
        .apply(builder)
        .build()
        .map_err(|e| GitError::Internal(format!("cannot build the HTTP client: {}", chain(&e))))
}
