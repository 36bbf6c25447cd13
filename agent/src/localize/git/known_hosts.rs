//! SSH host-key checking against OpenSSH `known_hosts` files.
//!
//! libgit2 only consults `$HOME/.ssh/known_hosts`; Periscope must check the file the user mounted
//! (`--known-hosts-file`, usually a Kubernetes Secret), so the certificate callback asks this
//! module. It only reads files and compares keys; it never writes a known_hosts file (first contact
//! is the user's decision, made with `--allow-unknown-host-keys`).
//!
//! Supported: plain host patterns with `*`/`?` wildcards and `!` negation, `[host]:port` for
//! non-standard ports, hashed names (`|1|salt|hash`, what `ssh-keyscan -H` and `ssh-keygen -H`
//! write: the HMAC-SHA1 of the name keyed with the salt), and `@revoked`. Host certificates
//! (`@cert-authority`) are not: such lines are skipped, which fails closed.

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
    let mut status = HostKeyStatus::Unknown;
    for file in files {
        let Ok(text) = std::fs::read_to_string(file) else {
            tracing::debug!(file = %file.display(), "known_hosts file not readable; skipped");
            continue;
        };
        match check_text(&text, host, port, key_type, key) {
            HostKeyStatus::Revoked => return HostKeyStatus::Revoked,
            HostKeyStatus::Known => status = HostKeyStatus::Known,
            HostKeyStatus::Changed if status == HostKeyStatus::Unknown => {
                status = HostKeyStatus::Changed
            }
            _ => {}
        }
    }
    status
}

/// What the known_hosts `text` says about `key` (the raw SSH public-key blob) of type `key_type`
/// for `host` on `port`. Any text is accepted: lines that cannot be read are skipped.
pub fn check_text(text: &str, host: &str, port: u16, key_type: &str, key: &[u8]) -> HostKeyStatus {
    let name = if port == 22 {
        host.to_ascii_lowercase()
    } else {
        format!("[{}]:{port}", host.to_ascii_lowercase())
    };
    let blob = base64(key);
    let mut status = HostKeyStatus::Unknown;
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
    status
}

/// Whether a hashed name (`|1|base64 salt|base64 HMAC-SHA1(salt, name)`) is `name`.
fn hashed_match(pattern: &str, name: &str) -> bool {
    use base64::Engine;
    use hmac::Mac;
    let Some((salt, hash)) = pattern
        .strip_prefix("|1|")
        .and_then(|rest| rest.split_once('|'))
    else {
        return false;
    };
    let engine = base64::engine::general_purpose::STANDARD;
    let (Ok(salt), Ok(hash)) = (engine.decode(salt), engine.decode(hash)) else {
        return false;
    };
    let Ok(mut mac) = hmac::Hmac::<sha1::Sha1>::new_from_slice(&salt) else {
        return false;
    };
    mac.update(name.as_bytes());
    // Constant-time comparison; a wrong length is simply no match.
    mac.verify_slice(&hash).is_ok()
}

/// Whether a comma-separated pattern list names `name`: some pattern matches and no negated one.
fn hosts_match(patterns: &str, name: &str) -> bool {
    let mut matched = false;
    for pattern in patterns.split(',') {
        if pattern.starts_with('|') {
            if hashed_match(pattern, name) {
                matched = true;
            }
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
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
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
                 |1|c2FsdA==|aGFzaA== ssh-ed25519 {k}\n\
                 {hashed} ssh-ed25519 {k}\n",
                k = base64(key),
                o = base64(other),
                hashed = hashed_name(b"salt-of-twenty-bytes", "[hashed.test]:2222"),
            ),
        )
        .unwrap();
        let files = [file];
        use HostKeyStatus::*;
        let t = "ssh-ed25519";
        for (host, port, ty, k, expected) in [
            ("127.0.0.1", 2222, t, key, Known),
            ("127.0.0.1", 22, t, key, Unknown),
            ("127.0.0.1", 2222, t, other, Changed),
            ("git.example.test", 22, t, key, Known),
            ("bad.example.test", 22, t, key, Unknown),
            ("changed.test", 22, t, key, Changed),
            ("revoked.test", 22, t, key, Revoked),
            ("127.0.0.1", 2222, "ssh-rsa", key, Unknown),
            ("hashed.test", 2222, t, key, Known),
            ("hashed.test", 2222, t, other, Changed),
            ("hashed.test", 22, t, key, Unknown),
        ] {
            assert_eq!(check(&files, host, port, ty, k), expected, "{host}:{port}");
        }
    }

    /// A hashed known_hosts name, as `ssh-keygen -H` writes it.
    fn hashed_name(salt: &[u8], name: &str) -> String {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(salt).unwrap();
        mac.update(name.as_bytes());
        format!(
            "|1|{}|{}",
            base64(salt),
            base64(&mac.finalize().into_bytes())
        )
    }

    #[test]
    fn any_text_is_read_without_panicking() {
        for text in [
            "|1|",
            "|1|||",
            "|1|!!|??  ssh-ed25519 x",
            "@revoked",
            "@revoked h",
            "h t",
        ] {
            assert_eq!(
                check_text(text, "h", 22, "ssh-ed25519", b"k"),
                HostKeyStatus::Unknown
            );
        }
    }
}
