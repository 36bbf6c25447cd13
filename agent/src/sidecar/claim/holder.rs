//! Who holds a worker's folder: the body of a claim object, and the token that makes a state
//! folder its holder.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

use super::error::ClaimError;
use crate::fsutil::no_room;

/// The file in the state folder that keeps this sidecar's token across restarts.
const TOKEN_FILE: &str = "worker-claim-token";

/// Who holds a worker's folder. Invariant: `token` is what the holder's state folder keeps, and
/// `attempt` is the number in its claim's name.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Holder {
    pub token: String,
    /// The pod's name (or the machine's hostname).
    pub pod: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// When the claim was made (RFC 3339, UTC).
    pub since: String,
    /// Which attempt of the worker this is: 1 for the first claim, one more for each take-over.
    #[serde(default = "first_attempt")]
    pub attempt: u32,
}

fn first_attempt() -> u32 {
    1
}

impl Holder {
    /// This process's pod, with `token`, as attempt `attempt`.
    pub fn here(token: String, attempt: u32) -> Holder {
        Holder {
            token,
            pod: pod_name(),
            pod_uid: env("POD_UID"),
            node: env("NODE_NAME"),
            since: now(),
            attempt,
        }
    }

    /// A claim object nobody can read: someone else's all the same.
    pub fn unknown(attempt: u32) -> Holder {
        Holder {
            token: String::new(),
            pod: "an unknown writer".into(),
            pod_uid: None,
            node: None,
            since: "an unknown time".into(),
            attempt,
        }
    }

    /// Parses a claim object's bytes (an unreadable one is [`Holder::unknown`]).
    pub fn parse(bytes: &[u8], attempt: u32) -> Holder {
        serde_json::from_slice(bytes).unwrap_or_else(|_| Holder::unknown(attempt))
    }

    /// The claim object's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        // A `Holder` is plain strings and numbers: serialising it cannot fail.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// The pod as people name it: pod `name` (uid …) on node `…`.
    pub fn describe(&self) -> String {
        let mut text = format!("pod `{}`", self.pod);
        if let Some(uid) = &self.pod_uid {
            text.push_str(&format!(" (uid {uid})"));
        }
        if let Some(node) = &self.node {
            text.push_str(&format!(" on node `{node}`"));
        }
        text
    }
}

/// This process's pod as people name it, in messages about a claim it did not make.
pub fn describe_here() -> String {
    Holder::here(String::new(), 1).describe()
}

/// This process's pod name: `POD_NAME` (the downward API), else the machine's hostname.
pub fn pod_name() -> String {
    env("POD_NAME")
        .or_else(crate::job::hostname)
        .unwrap_or_else(|| "unknown".into())
}

fn env(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.trim().is_empty())
}

/// Now, as claims and leases write times (RFC 3339, UTC, seconds).
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// This state folder's token, and whether the folder keeps it. Invariant: `value` never
/// changes; once `kept` is true, `path` holds `value`.
#[derive(Debug)]
pub struct Token {
    pub value: String,
    path: PathBuf,
    kept: AtomicBool,
}

impl Token {
    /// The state folder's token: the one it keeps, or a new one it is asked to keep. A folder
    /// with no room for it (full, or over quota) leaves the new token in memory, said once: the
    /// claim works all the same, and [`Token::keep`] tries again later.
    pub fn load(state_dir: &Path) -> Result<Token, ClaimError> {
        let path = state_dir.join(TOKEN_FILE);
        let failed = |source| ClaimError::Token {
            path: path.clone(),
            source,
        };
        match std::fs::read_to_string(&path) {
            Ok(t) if !t.trim().is_empty() => {
                return Ok(Token {
                    value: t.trim().to_string(),
                    path,
                    kept: AtomicBool::new(true),
                })
            }
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(failed(e)),
        }
        let token = Token {
            value: hex::encode(rand::random::<[u8; 16]>()),
            path: path.clone(),
            kept: AtomicBool::new(false),
        };
        match token.write() {
            Ok(()) => token.kept.store(true, Ordering::Release),
            // Room may be made later. A read-only folder is not waited for: nothing else of the
            // sidecar could write there either, so it stops before claiming anything.
            Err(e) if no_room(&e) => {
                tracing::warn!(path = %path.display(), error = %e,
                    "the state folder has no room for the worker claim's token; it is kept in memory \
                     and written once there is room: until then, a restart of this sidecar is taken \
                     for another pod, which takes the worker's folder over once this one's lease lapses")
            }
            Err(e) => return Err(failed(e)),
        }
        Ok(token)
    }

    /// Whether the state folder keeps the token (a restart of this sidecar continues its claim).
    pub fn is_kept(&self) -> bool {
        self.kept.load(Ordering::Acquire)
    }

    /// Writes the token to the state folder if it is not kept there yet (said once, when it
    /// is); returns whether it is kept.
    pub fn keep(&self) -> bool {
        if self.kept.load(Ordering::Acquire) {
            return true;
        }
        match self.write() {
            Ok(()) => {
                self.kept.store(true, Ordering::Release);
                tracing::info!(path = %self.path.display(),
                    "the worker claim's token is kept in the state folder now; a restart of this sidecar continues its claim");
                true
            }
            Err(_) => false,
        }
    }

    fn write(&self) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        crate::fsutil::write_atomic(&self.path, self.value.as_bytes())
    }
}
