//! The one retry policy.
//!
//! Every network client in Periscope (archive downloads, object stores, metastores) retries with
//! the same rule: exponential backoff with full jitter, capped, for a bounded number of attempts,
//! and a server's `Retry-After` wins over our own guess (within the cap) because the server knows
//! when it will be ready. Callers decide *whether* a failure is transient; this module decides *when*
//! to try again.

use std::future::Future;
use std::time::Duration;

use rand::Rng;

/// Backoff settings. Invariant: `base <= max_delay`, and `attempts >= 1` (the first try counts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// How many tries in all, including the first.
    pub attempts: u32,
    /// The delay ceiling before the second try; doubles each time.
    pub base: Duration,
    /// No single wait is longer than this, whatever the server asks.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 8,
            base: Duration::from_millis(200),
            max_delay: Duration::from_secs(30),
        }
    }
}

/// What a failed try tells the retry loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Trying again cannot help (404, bad credentials, checksum mismatch).
    Permanent,
    /// Try again after the policy's backoff.
    Transient,
    /// Try again after at least this long (a server's `Retry-After`).
    RetryAfter(Duration),
}

impl RetryPolicy {
    /// A policy with one try and no waiting, for tests and for callers that retry elsewhere.
    pub fn none() -> Self {
        RetryPolicy {
            attempts: 1,
            ..RetryPolicy::default()
        }
    }

    /// How long to wait after failed try number `attempt` (1-based), given the verdict.
    pub fn delay(&self, attempt: u32, verdict: Verdict) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
            .min(self.max_delay);
        // Full jitter: spreads a fleet of pods that failed together across the whole window.
        let jittered = rand::rng().random_range(Duration::ZERO..=exp);
        match verdict {
            Verdict::RetryAfter(asked) => asked.min(self.max_delay).max(jittered),
            _ => jittered,
        }
    }

    /// Runs `op` until it succeeds, returns a permanent failure, or the attempts run out; the last
    /// error is returned. `classify` says whether an error is worth another try. `on_retry` is told
    /// about each retry (for logs and metrics) with the attempt number and the wait.
    pub async fn run<T, E, Fut>(
        &self,
        mut op: impl FnMut(u32) -> Fut,
        classify: impl Fn(&E) -> Verdict,
        mut on_retry: impl FnMut(&E, u32, Duration),
    ) -> Result<T, E>
    where
        Fut: Future<Output = Result<T, E>>,
    {
        let mut attempt = 1;
        loop {
            match op(attempt).await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    let verdict = classify(&e);
                    if verdict == Verdict::Permanent || attempt >= self.attempts {
                        return Err(e);
                    }
                    let wait = self.delay(attempt, verdict);
                    on_retry(&e, attempt, wait);
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
            }
        }
    }
}

/// An episode of failures of one write that is retried until it works (a checkpoint or queue
/// record in a full state folder): when to try again, and what the health endpoints report while
/// it lasts. Shared between its owner, which calls [`Outage::failed`] and [`Outage::succeeded`],
/// and readers. Invariant: `failing` is `Some` exactly while the last attempt failed, and
/// `retry_at` is set only then.
#[derive(Debug, Default)]
pub struct Outage {
    state: std::sync::Mutex<OutageState>,
    failures: std::sync::atomic::AtomicU64,
}

#[derive(Debug, Default)]
struct OutageState {
    failing: Option<String>,
    streak: u32,
    retry_at: Option<std::time::Instant>,
}

impl Outage {
    fn state(&self) -> std::sync::MutexGuard<'_, OutageState> {
        // The state is plain data, valid whatever a panicking holder did.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records a failed attempt and schedules the next after `policy`'s backoff. Returns true
    /// when it starts an episode (say so once).
    pub fn failed(&self, policy: &RetryPolicy, error: &str) -> bool {
        self.failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut s = self.state();
        s.streak = s.streak.saturating_add(1);
        s.retry_at = Some(std::time::Instant::now() + policy.delay(s.streak, Verdict::Transient));
        s.failing.replace(error.to_owned()).is_none()
    }

    /// Records a successful attempt. Returns true when it ends an episode (say so once).
    pub fn succeeded(&self) -> bool {
        let mut s = self.state();
        s.streak = 0;
        s.retry_at = None;
        s.failing.take().is_some()
    }

    /// Whether an attempt may be made now: no episode, or its backoff has passed.
    pub fn due(&self) -> bool {
        self.state()
            .retry_at
            .is_none_or(|t| std::time::Instant::now() >= t)
    }

    /// Why the write fails, while it does.
    pub fn failing(&self) -> Option<String> {
        self.state().failing.clone()
    }

    /// Failed attempts since start.
    pub fn failures(&self) -> u64 {
        self.failures.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Parses an HTTP `Retry-After` value given in seconds. (The HTTP-date form is rare from the
/// servers we talk to and is treated as absent, which falls back to our own backoff.)
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_stay_capped() {
        let p = RetryPolicy {
            attempts: 10,
            base: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        };
        for attempt in 1..12 {
            let d = p.delay(attempt, Verdict::Transient);
            let ceiling = Duration::from_millis(100 * (1 << (attempt - 1))).min(p.max_delay);
            assert!(d <= ceiling, "attempt {attempt}: {d:?} > {ceiling:?}");
        }
        assert_eq!(
            p.delay(1, Verdict::RetryAfter(Duration::from_secs(60))),
            p.max_delay
        );
        assert!(
            p.delay(1, Verdict::RetryAfter(Duration::from_millis(500)))
                >= Duration::from_millis(500)
        );
    }

    #[test]
    fn an_outage_is_said_once_when_it_starts_and_once_when_it_ends() {
        let o = Outage::default();
        let p = RetryPolicy {
            base: Duration::from_secs(60),
            ..RetryPolicy::default()
        };
        assert!(o.due() && o.failing().is_none());
        assert!(o.failed(&p, "no space"));
        assert!(!o.failed(&p, "no space"));
        assert_eq!(o.failing().as_deref(), Some("no space"));
        assert_eq!(o.failures(), 2);
        assert!(o.succeeded());
        assert!(!o.succeeded());
        assert!(o.due() && o.failing().is_none());
    }

    #[tokio::test]
    async fn stops_on_permanent_and_after_attempts() {
        let p = RetryPolicy {
            attempts: 3,
            base: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
        };
        let mut tries = 0;
        let r: Result<(), &str> = p
            .run(
                |_| {
                    tries += 1;
                    async { Err("boom") }
                },
                |_| Verdict::Transient,
                |_, _, _| {},
            )
            .await;
        assert_eq!((r, tries), (Err("boom"), 3));
        let mut tries = 0;
        let r: Result<(), &str> = p
            .run(
                |_| {
                    tries += 1;
                    async { Err("nope") }
                },
                |_| Verdict::Permanent,
                |_, _, _| {},
            )
            .await;
        assert_eq!((r, tries), (Err("nope"), 1));
    }

    #[test]
    fn parses_retry_after_seconds() {
        assert_eq!(parse_retry_after(" 3 "), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }
}
