//! SSH host-key checking against OpenSSH `known_hosts` files.
//!
//! libgit2 only consults `$HOME/.ssh/known_hosts`; Periscope must check the file the user mounted
//! (`--known-hosts-file`, usually a Kubernetes Secret), so the certificate callback asks this
//! module. It only reads files and compares keys; it never writes a known_hosts file (first contact
//! is the user's decision, made with `--allow-unknown-host-keys`).
//!
//! Supported: plain host patterns with `*`/`?` wildcards and `!` negation, `[host]:port` for
//! non-standard ports, and `@revoked`. Hashed entries (`|1|…`, from `ssh-keygen -H`) cannot be
//! checked without HMAC-SHA1 and are skipped, which fails closed: such a host counts as unknown.

use std::path::PathBuf;

/// What the known_hosts files say about a host's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKeyStatus {
    /// A line for this host holds exactly this key.
    Known,
    /// No line names this host with this key type.
    Unknown,
    /// Lines name this host with this key type, but a different key: possibly a different server.
    Changed,
    /// The key is marked `@revoked`.
    Revoked,
}

/// Checks `key` (the raw SSH public-key blob) of type `key_type` (e.g. `ssh-ed25519`) for `host`
/// on `port` against every readable file in `files`.
pub fn check(
    files: &[PathBuf],
    host: &str,
    port: u16,
    key_type: &str,
    key: &[u8],
) -> HostKeyStatus {
    let name = if port == 22 {
        host.to_ascii_lowercase()
    } else {
        format!("[{}]:{port}", host.to_ascii_lowercase())
    };
    let blob = base64(key);
    let mut status = HostKeyStatus::Unknown;
    for file in files {
        let Ok(text) = std::fs::read_to_string(file) else {
            tracing::debug!(file = %file.display(), "known_hosts file not readable; skipped");
            continue;
        };
        for line in text.lines() {
            let mut fields = line.split_whitespace();
            let Some(mut first) = fields.next() else {
                continue;
            };
            if first.starts_with('#') {
                continue;
            }
            let mut revoked = false;
            if first.starts_with('@') {
                match first {
                    "@revoked" => revoked = true,
                    // Host certificates are not supported: the key must be listed itself.
                    _ => continue,
                }
                first = match fields.next() {
                    Some(f) => f,
                    None => continue,
                };
            }
            let (Some(ty), Some(key_text)) = (fields.next(), fields.next()) else {
                continue;
            };
            if !hosts_match(first, &name) {
                continue;
            }
            let same_key = ty == key_type && key_text == blob;
            if revoked && same_key {
                return HostKeyStatus::Revoked;
            }
            if revoked {
                continue;
            }
            if same_key {
                status = HostKeyStatus::Known;
            } else if ty == key_type && status == HostKeyStatus::Unknown {
                status = HostKeyStatus::Changed;
            }
        }
    }
    status
}

/// Whether a comma-separated pattern list names `name`: some pattern matches and no negated one.
fn hosts_match(patterns: &str, name: &str) -> bool {
    let mut matched = false;
    for pattern in patterns.split(',') {
        if pattern.starts_with('|') {
            continue;
        }
        let (negated, pattern) = match pattern.strip_prefix('!') {
            Some(p) => (true, p),
            None => (false, pattern),
        };
        if glob(pattern.to_ascii_lowercase().as_bytes(), name.as_bytes()) {
            if negated {
                return false;
            }
            matched = true;
        }
    }
    matched
}

fn glob(pattern: &[u8], text: &[u8]) -> bool {
    match (pattern.first(), text.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            glob(&pattern[1..], text) || (!text.is_empty() && glob(pattern, &text[1..]))
        }
        (Some(b'?'), Some(_)) => glob(&pattern[1..], &text[1..]),
        (Some(p), Some(t)) if p == t => glob(&pattern[1..], &text[1..]),
        _ => false,
    }
}

/// Standard base64 with padding, as known_hosts and `ssh-keygen -l` write keys.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The key's fingerprint as `ssh-keygen -l` prints it: `SHA256:` and unpadded base64.
pub fn fingerprint(key: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(key);
    format!("SHA256:{}", base64(&digest).trim_end_matches('='))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_base64_like_openssh() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn matches_hosts_ports_wildcards_and_revocations() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("known_hosts");
        let key = b"key-one";
        let other = b"key-two";
        std::fs::write(
            &file,
            format!(
                "# comment\n\
                 [127.0.0.1]:2222 ssh-ed25519 {k}\n\
                 *.example.test,!bad.example.test ssh-ed25519 {k}\n\
                 changed.test ssh-ed25519 {o}\n\
                 @revoked revoked.test ssh-ed25519 {k}\n\
                 revoked.test ssh-ed25519 {k}\n\
                 |1|c2FsdA==|aGFzaA== ssh-ed25519 {k}\n",
                k = base64(key),
                o = base64(other)
            ),
        )
        .unwrap();
        let files = [file];
        let t = "ssh-ed25519";
        assert_eq!(
            check(&files, "127.0.0.1", 2222, t, key),
            HostKeyStatus::Known
        );
        assert_eq!(
            check(&files, "127.0.0.1", 22, t, key),
            HostKeyStatus::Unknown
        );
        assert_eq!(
            check(&files, "127.0.0.1", 2222, t, other),
            HostKeyStatus::Changed
        );
        assert_eq!(
            check(&files, "git.example.test", 22, t, key),
            HostKeyStatus::Known
        );
        assert_eq!(
            check(&files, "bad.example.test", 22, t, key),
            HostKeyStatus::Unknown
        );
        assert_eq!(
            check(&files, "changed.test", 22, t, key),
            HostKeyStatus::Changed
        );
        assert_eq!(
            check(&files, "revoked.test", 22, t, key),
            HostKeyStatus::Revoked
        );
        assert_eq!(
            check(&files, "127.0.0.1", 2222, "ssh-rsa", key),
            HostKeyStatus::Unknown
        );
    }
}
