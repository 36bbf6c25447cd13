//! How secrets and URLs are shown.
//!
//! Credentials arrive in URLs (`https://user:token@host`, presigned query strings), flags, files
//! and the environment. This module owns the two rules that keep them out of every log line,
//! error, metastore row and stored object: a [`Secret`] never formats its content, and
//! [`redact_url`] is the only way a source URL is turned into text for people.

use std::fmt;

/// A credential. Its `Debug` and `Display` never show the value; call [`Secret::expose`] only at the
/// point where the value is handed to a library that needs it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a credential.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The credential itself. Never pass the result to `tracing`, `format!` or an error.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Query parameter names whose values are shown, because they never carry credentials and help a
/// person recognise the URL. Every other query value is replaced by `***`: presigned URLs carry
/// signatures and tokens under many names (`X-Amz-Signature`, `sig`, `token`, `X-Goog-Credential`).
const SAFE_QUERY_KEYS: &[&str] = &["versionId", "generation", "ref", "format"];

/// Returns `raw` with credentials removed: the password (and, for http(s), the user name, which is
/// often a token) and the values of query parameters. The fragment is kept, since it holds only
/// Periscope's own options. Text that is not a URL (an scp-like `git@host:repo`) is returned with
/// anything before an `@` in a `user:pass@` form replaced.
pub fn redact_url(raw: &str) -> String {
    if !raw.contains("://") {
        // `user:pass@host:path` would parse as a URL with scheme `user`; treat it as scp-like.
        return redact_scp_like(raw);
    }
    match url::Url::parse(raw) {
        Ok(mut url) => {
            let scheme = url.scheme().to_ascii_lowercase();
            let http_like = scheme.contains("http");
            if url.password().is_some() {
                // `set_password` fails only for URLs that cannot have credentials, which have none.
                let _ = url.set_password(Some("***"));
            }
            if http_like && !url.username().is_empty() {
                let _ = url.set_username("***");
            }
            if url.query().is_some() {
                let pairs: Vec<(String, String)> = url
                    .query_pairs()
                    .map(|(k, v)| {
                        let shown = if SAFE_QUERY_KEYS.iter().any(|s| s.eq_ignore_ascii_case(&k)) {
                            v.into_owned()
                        } else {
                            "***".to_string()
                        };
                        (k.into_owned(), shown)
                    })
                    .collect();
                let mut q = url.query_pairs_mut();
                q.clear();
                for (k, v) in pairs {
                    q.append_pair(&k, &v);
                }
            }
            url.to_string().replace("%2A%2A%2A", "***")
        }
        Err(_) => redact_scp_like(raw),
    }
}

fn redact_scp_like(raw: &str) -> String {
    match raw.split_once('@') {
        Some((user, rest)) if user.contains(':') => {
            let name = user.split(':').next().unwrap_or_default();
            format!("{name}:***@{rest}")
        }
        _ => raw.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_password_and_token_user() {
        let shown = redact_url("https://alice:hunter2@example.test/org/repo.git#ref=main");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("alice"), "{shown}");
        assert!(shown.ends_with("#ref=main"), "{shown}");
        let shown = redact_url("https://ghp_abcdef@example.test/org/repo.git");
        assert!(!shown.contains("ghp_abcdef"), "{shown}");
    }

    #[test]
    fn removes_presigned_query_values() {
        let shown = redact_url(
            "https://b.example.test/k.tar.gz?X-Amz-Signature=deadbeef&X-Amz-Credential=AKIA&versionId=7",
        );
        assert!(!shown.contains("deadbeef"), "{shown}");
        assert!(!shown.contains("AKIA"), "{shown}");
        assert!(shown.contains("versionId=7"), "{shown}");
    }

    #[test]
    fn keeps_ssh_user_and_redacts_scp_password() {
        assert_eq!(
            redact_url("git+ssh://git@example.test/org/repo.git"),
            "git+ssh://git@example.test/org/repo.git"
        );
        assert_eq!(
            redact_url("git@example.test:org/repo.git"),
            "git@example.test:org/repo.git"
        );
        assert_eq!(
            redact_url("bob:pw@example.test:org/r.git"),
            "bob:***@example.test:org/r.git"
        );
    }

    #[test]
    fn secret_never_formats() {
        let s = Secret::new("topsecret");
        assert_eq!(format!("{s} {s:?}"), "*** Secret(***)");
        assert_eq!(s.expose(), "topsecret");
    }
}
