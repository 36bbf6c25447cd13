//! Where a worker folder's claim lives: one create-only object per attempt, and one lease.
//!
//! `<worker>/claim.json` is attempt 1's claim, `<worker>/claim-<n>.json` attempt `n`'s (n ≥ 2);
//! the highest attempt stored holds the folder. `<worker>/lease.json` is rewritten by the holder
//! while it runs, and once more when it ends.

use object_store::path::Path;

/// Attempt 1's claim (the name every attempt-1 folder has had).
pub const CLAIM_FILE: &str = "claim.json";

/// The holder's lease: its heartbeat, then how it ended.
pub const LEASE_FILE: &str = "lease.json";

/// The key of attempt `attempt`'s claim under `worker_prefix`. Invariant: `attempt >= 1`.
pub fn claim_key(worker_prefix: &Path, attempt: u32) -> Path {
    match attempt {
        0 | 1 => worker_prefix.clone().join(CLAIM_FILE),
        n => worker_prefix.clone().join(format!("claim-{n}.json")),
    }
}

/// The attempt a file name directly under a worker's folder claims, if it is a claim.
pub fn attempt_of(file_name: &str) -> Option<u32> {
    if file_name == CLAIM_FILE {
        return Some(1);
    }
    let n: u32 = file_name
        .strip_prefix("claim-")?
        .strip_suffix(".json")?
        .parse()
        .ok()?;
    (n >= 2).then_some(n)
}

/// The lease's key under `worker_prefix`.
pub fn lease_key(worker_prefix: &Path) -> Path {
    worker_prefix.clone().join(LEASE_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_names_round_trip_and_attempt_one_keeps_its_name() {
        let worker = Path::from("runs/exp/worker-0");
        for n in 1..=12 {
            let key = claim_key(&worker, n);
            assert_eq!(attempt_of(key.filename().unwrap()), Some(n));
        }
        assert_eq!(
            claim_key(&worker, 1).as_ref(),
            "runs/exp/worker-0/claim.json"
        );
        for other in [
            "claim-1.json",
            "claim-0.json",
            "claim-x.json",
            "lease.json",
            "claim.jsonl",
        ] {
            assert_eq!(attempt_of(other), None, "{other}");
        }
    }
}
