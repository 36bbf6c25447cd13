//! Who holds a worker's folder: the body of a claim object, and the token that makes a state
//! folder its holder.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::error::ClaimError;

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

/// The state folder's token, made the first time.
pub fn token(state_dir: &Path) -> Result<String, ClaimError> {
    let path = state_dir.join(TOKEN_FILE);
    let failed = |source| ClaimError::Token {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(failed(e)),
    }
    let token = hex::encode(rand::random::<[u8; 16]>());
    std::fs::create_dir_all(state_dir).map_err(failed)?;
    crate::fsutil::write_atomic(&path, token.as_bytes()).map_err(failed)?;
    Ok(token)
}
