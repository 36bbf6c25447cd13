//! Why a worker's folder could not be claimed, or stopped being this sidecar's.

use crate::error::{Classify, ErrorClass};
use crate::storage::StorageError;

/// Why a worker's folder could not be claimed. Invariant: only `Storage` (network) and `Waiting`
/// are worth trying again ([`ClaimError::is_transient`]).
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("cannot keep the claim token in `{}`: {source}", path.display())]
    Token {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// Another pod holds the folder and renews its lease: it is running.
    #[error("{folder} is held by {holder} since {since}, which is still running (its lease was renewed); this sidecar ({here}) would overwrite what it stores, so it stops")]
    Held {
        folder: String,
        holder: String,
        since: String,
        here: String,
    },
    /// The holder's job ended successfully: the worker is done.
    #[error("{folder} is held by {holder} since {since}, whose job succeeded; this sidecar ({here}) would add another job to a finished worker's folder, so it stops")]
    Finished {
        folder: String,
        holder: String,
        since: String,
        here: String,
    },
    /// A later attempt took the folder over after this sidecar's lease lapsed.
    #[error("{folder} was taken over by {by} (attempt {attempt}) after this sidecar's lease lapsed; it stores nothing more there")]
    TakenOver {
        folder: String,
        by: String,
        attempt: u32,
    },
    /// The holder may have ended without saying so: the claim is taken over if its lease lapses.
    #[error("{folder} is held by {holder}; waiting up to {lapse_s:.0} s for its lease to be renewed or to lapse")]
    Waiting {
        folder: String,
        holder: String,
        lapse_s: f64,
    },
}

impl Classify for ClaimError {
    fn class(&self) -> ErrorClass {
        match self {
            ClaimError::Storage(e) => e.class(),
            ClaimError::Token { .. } => ErrorClass::Io,
            ClaimError::Held { .. }
            | ClaimError::Finished { .. }
            | ClaimError::TakenOver { .. }
            | ClaimError::Waiting { .. } => ErrorClass::Conflict,
        }
    }

    fn hint(&self) -> Option<String> {
        const NAMES: &str = "give each pod its own worker name: set --worker (PERISCOPE_WORKER), \
            or let it come from JOB_COMPLETION_INDEX (Indexed Job), PERISCOPE_REPLICA_TYPE/INDEX \
            (the training operator's labels) or TF_CONFIG/RANK";
        match self {
            ClaimError::Storage(e) => e.hint(),
            ClaimError::Token { .. } => Some("--state-dir must be writable".into()),
            ClaimError::Held { .. } => Some(format!(
                "{NAMES}; a pod that replaces a stopped or failed one takes its folder over once \
                 that one's lease lapses (--claim-lease)"
            )),
            ClaimError::Finished { .. } => Some(format!(
                "{NAMES}; a job started again after it succeeded needs its own experiment id \
                 (JOB_ID or --experiment-id)"
            )),
            ClaimError::TakenOver { .. } => Some(
                "this pod could not renew its lease for longer than --claim-lease (storage \
                 unreachable, or the process paused); what it had not stored stays in --state-dir"
                    .into(),
            ),
            ClaimError::Waiting { .. } => None,
        }
    }
}

impl ClaimError {
    /// Whether trying again may succeed: storage could not be reached, or the holder's lease may
    /// still lapse.
    pub fn is_transient(&self) -> bool {
        match self {
            ClaimError::Storage(e) => e.class() == ErrorClass::Network,
            ClaimError::Waiting { .. } => true,
            _ => false,
        }
    }
}
